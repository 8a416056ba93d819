/**
 * The agent's reconcile plan (issue 19): creates, starts, stops, updates and removals in the
 * order startupOrder asks for (up lowest first, down highest first), desired status honoured,
 * strays removed, exited modules left to the restart policy.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readAgentDesired, type DesiredModule } from '../../src/agent/manifest.ts';
import { planActions, type PlanAction } from '../../src/agent/plan.ts';
import type { ModuleState } from '../../src/agent/runtime.ts';

function modules(defs: Record<string, { order?: number; status?: string; image?: string }>): DesiredModule[] {
  const out: Record<string, unknown> = {};
  for (const [name, d] of Object.entries(defs)) {
    out[name] = {
      type: 'docker',
      status: d.status ?? 'running',
      restartPolicy: 'always',
      startupOrder: d.order,
      settings: { image: d.image ?? `${name}:1` },
    };
  }
  const { deployment, problems } = readAgentDesired({ schemaVersion: '1.1', modules: out });
  assert.deepEqual(problems, []);
  return deployment.modules;
}

function running(m: DesiredModule, extra: Partial<ModuleState> = {}): ModuleState {
  return { name: m.name, runtimeStatus: 'running', specHash: m.spec.specHash, startedAt: 1, ...extra };
}

const brief = (actions: PlanAction[]) =>
  actions.map((a) =>
    a.kind === 'create' || a.kind === 'recreate'
      ? `${a.kind}${a.start ? '+start' : ''} ${a.name}`
      : `${a.kind} ${a.name}`,
  );

test('an empty runtime gets every module created and started, lowest startupOrder first', () => {
  const desired = modules({ filter: { order: 2 }, sensor: { order: 1 }, hub: { order: 0 }, extra: {} });
  const actions = planActions({ desired, states: [] });
  assert.deepEqual(brief(actions), [
    'create+start hub',
    'create+start sensor',
    'create+start filter',
    'create+start extra',
  ]);
  const sensor = actions[1] as Extract<PlanAction, { kind: 'create' }>;
  assert.equal(sensor.spec.image, 'sensor:1');
});

test('a module desired stopped is created but not started', () => {
  const desired = modules({ a: { status: 'stopped' } });
  assert.deepEqual(brief(planActions({ desired, states: [] })), ['create a']);
});

test('nothing to do when the runtime already matches', () => {
  const desired = modules({ a: { order: 1 }, b: { order: 2 } });
  assert.deepEqual(planActions({ desired, states: desired.map((m) => running(m)) }), []);
});

test('stops go highest startupOrder first, before anything is started', () => {
  const desired = modules({
    a: { order: 1, status: 'stopped' },
    b: { order: 2, status: 'stopped' },
    c: { order: 3, status: 'stopped' },
    d: { order: 0 },
  });
  const states = desired.filter((m) => m.name !== 'd').map((m) => running(m));
  assert.deepEqual(brief(planActions({ desired, states })), ['stop c', 'stop b', 'stop a', 'create+start d']);
});

test('strays (held by the runtime, not in the deployment) are removed first; kept names are left alone', () => {
  const desired = modules({ a: { order: 1 } });
  const states: ModuleState[] = [
    running(desired[0]!),
    { name: 'zombie', runtimeStatus: 'running', specHash: 'x' },
    { name: 'old', runtimeStatus: 'stopped', specHash: 'y' },
    { name: 'broken-now', runtimeStatus: 'running', specHash: 'z' },
  ];
  const actions = planActions({ desired, states, keep: ['broken-now'] });
  assert.deepEqual(brief(actions), ['remove old', 'remove zombie']);
  assert.ok(actions.every((a) => a.kind !== 'remove' || a.reason === 'stray'));
});

test('a changed spec (new image tag) is recreated, keeping its desired status', () => {
  const before = modules({ a: { order: 1 }, b: { order: 2, status: 'stopped' } });
  const after = modules({ a: { order: 1, image: 'a:2' }, b: { order: 2, status: 'stopped', image: 'b:2' } });
  const states = [running(before[0]!), { ...running(before[1]!), runtimeStatus: 'stopped' as const, exitCode: 0 }];
  const actions = planActions({ desired: after, states });
  assert.deepEqual(brief(actions), ['recreate+start a', 'recreate b']);
  assert.equal((actions[0] as Extract<PlanAction, { kind: 'recreate' }>).spec.image, 'a:2');
});

test('a running module whose spec changed and is now desired stopped is recreated, not started', () => {
  const before = modules({ a: {} });
  const after = modules({ a: { status: 'stopped', image: 'a:2' } });
  assert.deepEqual(brief(planActions({ desired: after, states: [running(before[0]!)] })), ['recreate a']);
});

test('a created but never started module is started; one that exited is left to the restart policy', () => {
  const desired = modules({ fresh: { order: 1 }, exited: { order: 2 }, waiting: { order: 3 } });
  const states: ModuleState[] = [
    { name: 'fresh', runtimeStatus: 'stopped', specHash: desired[0]!.spec.specHash },
    { name: 'exited', runtimeStatus: 'failed', specHash: desired[1]!.spec.specHash, exitCode: 1, exitedAt: 5 },
    { name: 'waiting', runtimeStatus: 'stopped', specHash: desired[2]!.spec.specHash, exitCode: 0, exitedAt: 5 },
  ];
  assert.deepEqual(brief(planActions({ desired, states })), ['start fresh', 'start exited', 'start waiting']);
  const asked: string[] = [];
  const actions = planActions({
    desired,
    states,
    mayRestart: (m, s) => {
      asked.push(`${m.name}:${s.exitCode}`);
      return m.name === 'exited';
    },
  });
  assert.deepEqual(brief(actions), ['start fresh', 'start exited']);
  assert.deepEqual(asked, ['exited:1', 'waiting:0']);
});

test('a mixed update: stray removed, stop in reverse order, then recreate, create and start in order', () => {
  const old = modules({ sensor: { order: 1 }, filter: { order: 2 }, sink: { order: 3 } });
  const next = modules({
    sensor: { order: 1, image: 'sensor:2' },
    filter: { order: 2, status: 'stopped' },
    sink: { order: 3, status: 'stopped' },
    fresh: { order: 0 },
  });
  const states = [...old.map((m) => running(m)), { name: 'gone', runtimeStatus: 'running' as const, specHash: 'g' }];
  assert.deepEqual(brief(planActions({ desired: next, states })), [
    'remove gone',
    'stop sink',
    'stop filter',
    'create+start fresh',
    'recreate+start sensor',
  ]);
});

test('the plan is pure: inputs are not changed and the same inputs give the same plan', () => {
  const desired = modules({ b: { order: 2 }, a: { order: 2 } });
  const states: ModuleState[] = [{ name: 'z', runtimeStatus: 'running' }];
  const snapshot = JSON.stringify({ desired, states });
  const one = planActions({ desired, states });
  const two = planActions({ desired, states });
  assert.deepEqual(one, two);
  assert.deepEqual(brief(one), ['remove z', 'create+start a', 'create+start b']);
  assert.equal(JSON.stringify({ desired, states }), snapshot);
});

test('a running module its health check calls unhealthy is restarted when the policy says so', () => {
  const [m] = modules({ sick: {} });
  const sick = running(m!, { health: 'unhealthy' });
  assert.deepEqual(brief(planActions({ desired: [m!], states: [sick] })), ['restart sick']);
  assert.deepEqual(brief(planActions({ desired: [m!], states: [sick], mayRestart: () => false })), []);
  assert.deepEqual(brief(planActions({ desired: [m!], states: [running(m!, { health: 'healthy' })] })), []);
});
