/**
 * Restart policies and back-off as IoT Edge's agent applies them (issue 19): which exits restart
 * under each policy, the cool-off doubling from 10 s to a 5 minute ceiling, `failed` after the
 * maximum restart count, the count reset after a healthy run, and the descriptions people read.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  coolOffMs,
  DEFAULT_RESTART_SETTINGS,
  decideRestart,
  humanize,
  policyRestarts,
  recordRestart,
  resetIfHealthy,
  type RestartRecord,
} from '../../src/agent/restart-policy.ts';
import type { ModuleState } from '../../src/agent/runtime.ts';

test('which exits each policy restarts', () => {
  const table: Array<[Parameters<typeof policyRestarts>[0], number, boolean]> = [
    ['never', 0, false],
    ['never', 1, false],
    ['on-failure', 0, false],
    ['on-failure', 1, true],
    ['on-failure', 137, true],
    ['on-unhealthy', 0, false],
    ['on-unhealthy', 2, true],
    ['always', 0, true],
    ['always', 1, true],
  ];
  for (const [policy, code, restarts] of table)
    assert.equal(policyRestarts(policy, code), restarts, `${policy} ${code}`);
});

test("IoT Edge's defaults are the settings' defaults", () => {
  assert.deepEqual(
    { ...DEFAULT_RESTART_SETTINGS },
    { coolOffTimeUnitSecs: 10, maxCoolOffSecs: 300, maxRestartCount: 5, intensiveCareSecs: 600 },
  );
});

test('the cool-off doubles from 10 s up to the 5 minute ceiling', () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 20].map((n) => coolOffMs(n) / 1000),
    [10, 20, 40, 80, 160, 300, 300, 300],
  );
  const fast = { ...DEFAULT_RESTART_SETTINGS, coolOffTimeUnitSecs: 1, maxCoolOffSecs: 4 };
  assert.deepEqual(
    [0, 1, 2, 3].map((n) => coolOffMs(n, fast)),
    [1000, 2000, 4000, 4000],
  );
});

const exited = (exitCode: number, exitedAt = 100_000): ModuleState => ({
  name: 'm',
  runtimeStatus: exitCode === 0 ? 'stopped' : 'failed',
  exitCode,
  startedAt: 90_000,
  exitedAt,
});

test('a module that exits under always backs off, growing with each restart, then fails', () => {
  let record: RestartRecord = { restartCount: 0 };
  const seen: number[] = [];
  let now = 100_000;
  for (let i = 0; i < 5; i++) {
    const d = decideRestart(exited(1, now), 'always', record, now);
    assert.equal(d.runtimeStatus, 'backoff');
    seen.push((d.restartAt! - now) / 1000);
    assert.equal(d.statusDescription, `Backing off for ${seen[i]} seconds`);
    now = d.restartAt!;
    record = recordRestart(record, now);
    assert.equal(record.lastRestartTime, now);
  }
  assert.deepEqual(seen, [10, 20, 40, 80, 160]);
  assert.equal(record.restartCount, 5);
  const d = decideRestart(exited(1, now), 'always', record, now + 2000);
  assert.equal(d.runtimeStatus, 'failed');
  assert.equal(d.statusDescription, 'Failed (1) 2 seconds ago');
  assert.equal(d.restartAt, undefined);
});

test('the back-off description counts down', () => {
  const d = decideRestart(exited(1, 100_000), 'always', { restartCount: 2 }, 112_500);
  assert.equal(d.restartAt, 140_000);
  assert.equal(d.statusDescription, 'Backing off for 28 seconds');
});

test('under never an exit is final: failed with its code, or stopped after exit 0', () => {
  const failed = decideRestart(exited(1), 'never', { restartCount: 0 }, 160_000);
  assert.equal(failed.runtimeStatus, 'failed');
  assert.equal(failed.statusDescription, 'Failed (1) 1 minute ago');
  const clean = decideRestart(exited(0), 'never', { restartCount: 0 }, 100_000);
  assert.equal(clean.runtimeStatus, 'stopped');
  assert.equal(clean.statusDescription, 'Exited (0) 0 seconds ago');
});

test('on-failure and on-unhealthy restart a failure but not a clean exit', () => {
  for (const policy of ['on-failure', 'on-unhealthy'] as const) {
    assert.equal(decideRestart(exited(3), policy, { restartCount: 0 }, 100_000).runtimeStatus, 'backoff', policy);
    assert.equal(decideRestart(exited(0), policy, { restartCount: 0 }, 100_000).runtimeStatus, 'stopped', policy);
  }
});

test('a running module is running, "Up ..."; one the agent stopped is stopped, never backed off', () => {
  const up = decideRestart(
    { name: 'm', runtimeStatus: 'running', startedAt: 0 },
    'always',
    { restartCount: 0 },
    185_000,
  );
  assert.deepEqual(up, { runtimeStatus: 'running', statusDescription: 'Up 3 minutes' });
  const stopped = decideRestart(exited(143), 'always', { restartCount: 0 }, 100_000, { stoppedByAgent: true });
  assert.deepEqual(stopped, { runtimeStatus: 'stopped', statusDescription: 'Stopped' });
  assert.equal(
    decideRestart({ name: 'm', runtimeStatus: 'unknown' }, 'always', { restartCount: 0 }, 0).runtimeStatus,
    'unknown',
  );
});

test('the restart count is reset after a healthy run of the intensive-care time, not before', () => {
  const record = { restartCount: 3, lastRestartTime: 0 };
  const runningSince = (startedAt: number): ModuleState => ({ name: 'm', runtimeStatus: 'running', startedAt });
  assert.equal(resetIfHealthy(record, runningSince(0), 599_000).restartCount, 3);
  assert.equal(resetIfHealthy(record, runningSince(0), 600_000).restartCount, 0);
  assert.equal(resetIfHealthy(record, runningSince(0), 600_000).lastRestartTime, 0);
  assert.equal(resetIfHealthy(record, exited(1, 700_000), 900_000).restartCount, 3);
  const short = { ...DEFAULT_RESTART_SETTINGS, intensiveCareSecs: 5 };
  assert.equal(resetIfHealthy(record, runningSince(0), 5000, short).restartCount, 0);
  // After the reset the back-off starts over at the first cool-off.
  const d = decideRestart(exited(1, 1_000_000), 'always', { restartCount: 0 }, 1_000_000);
  assert.equal(d.restartAt, 1_010_000);
});

test('humanize gives coarse spans', () => {
  assert.deepEqual([0, 1000, 59_999, 60_000, 3_599_000, 3_600_000, 47 * 3_600_000, 48 * 3_600_000].map(humanize), [
    '0 seconds',
    '1 second',
    '59 seconds',
    '1 minute',
    '59 minutes',
    '1 hour',
    '47 hours',
    '2 days',
  ]);
});

test('an unhealthy module: restarted under on-unhealthy and always after its cool-off, reported otherwise', () => {
  const sick: ModuleState = { name: 'm', runtimeStatus: 'running', startedAt: 100_000, health: 'unhealthy' };
  for (const policy of ['on-unhealthy', 'always'] as const) {
    const early = decideRestart(sick, policy, { restartCount: 1 }, 105_000);
    assert.equal(early.runtimeStatus, 'unhealthy', policy);
    // The second restart waits 20 s from the last start.
    assert.equal(early.restartAt, 120_000);
    assert.equal(early.statusDescription, 'Unhealthy; restarting in 15 seconds');
    const due = decideRestart(sick, policy, { restartCount: 1 }, 125_000);
    assert.equal(due.statusDescription, 'Unhealthy; restarting');
    assert.ok(due.restartAt! <= 125_000);
    const spent = decideRestart(sick, policy, { restartCount: 5 }, 125_000);
    assert.equal(spent.runtimeStatus, 'failed');
    assert.equal(spent.restartAt, undefined);
    assert.match(spent.statusDescription, /Unhealthy after 5 restarts/);
  }
  for (const policy of ['never', 'on-failure'] as const) {
    const d = decideRestart(sick, policy, { restartCount: 0 }, 160_000);
    assert.equal(d.runtimeStatus, 'unhealthy', policy);
    assert.equal(d.restartAt, undefined, `${policy} never restarts for health`);
    assert.equal(d.statusDescription, 'Up 1 minute (unhealthy)');
  }
  for (const health of ['healthy', 'starting'] as const) {
    const d = decideRestart({ ...sick, health }, 'on-unhealthy', { restartCount: 0 }, 160_000);
    assert.deepEqual(d, { runtimeStatus: 'running', statusDescription: 'Up 1 minute' });
  }
});

test('an unhealthy module is not counted healthy again, however long it runs', () => {
  const sick: ModuleState = { name: 'm', runtimeStatus: 'running', startedAt: 0, health: 'unhealthy' };
  const record = { restartCount: 3 };
  assert.equal(resetIfHealthy(record, sick, 3_600_000), record);
  assert.equal(resetIfHealthy(record, { ...sick, health: 'healthy' }, 3_600_000).restartCount, 0);
});
