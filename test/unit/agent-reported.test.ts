/**
 * `$edgeAgent` reported properties (issue 19), shaped as IoT Edge reports them:
 * lastDesiredVersion, lastDesiredStatus {code, description}, runtime, systemModules, and per
 * module runtimeStatus, exitCode, statusDescription, times, restartCount and desired fields;
 * bad modules named in lastDesiredStatus; removed modules cleared with null.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AgentManifestError, readAgentDesired } from '../../src/agent/manifest.ts';
import {
  buildAgentReported,
  lastDesiredStatus,
  type ModuleObservation,
  reportedPatch,
} from '../../src/agent/reported.ts';
import { decideRestart } from '../../src/agent/restart-policy.ts';

const T0 = Date.parse('2026-12-07T06:00:00.000Z');

function desired(extra: Record<string, unknown> = {}) {
  return {
    schemaVersion: '1.1',
    runtime: {
      type: 'docker',
      settings: {
        minDockerVersion: 'v1.25',
        registryCredentials: { r: { address: 'r.test', username: 'u', password: 'secret' } },
      },
    },
    systemModules: {
      edgeAgent: { type: 'docker', settings: { image: 'mcr.microsoft.com/azureiotedge-agent:1.2' } },
      edgeHub: {
        type: 'docker',
        status: 'running',
        restartPolicy: 'always',
        settings: { image: 'mcr.microsoft.com/azureiotedge-hub:1.2' },
      },
    },
    modules: {
      sensor: {
        type: 'docker',
        version: '1.0',
        status: 'running',
        restartPolicy: 'always',
        settings: { image: 'r.test/sensor:1', createOptions: '{"Env":["A=1"]}' },
      },
      crashy: { type: 'process', status: 'running', restartPolicy: 'always', settings: { command: 'false' } },
      ...extra,
    },
  };
}

const observations: Record<string, ModuleObservation> = {
  sensor: {
    state: { name: 'sensor', runtimeStatus: 'running', startedAt: T0, specHash: 'h' },
    record: { restartCount: 0 },
  },
  crashy: {
    state: { name: 'crashy', runtimeStatus: 'failed', startedAt: T0, exitedAt: T0 + 1000, exitCode: 1 },
    record: { restartCount: 2, lastRestartTime: T0 },
  },
};
for (const [name, o] of Object.entries(observations)) {
  o.decision = decideRestart(o.state!, 'always', o.record!, T0 + 5000);
  void name;
}

test('a healthy deployment reports 200 and every module as IoT Edge names the fields', () => {
  const { deployment, problems } = readAgentDesired(desired());
  const r = buildAgentReported({
    desiredVersion: 7,
    deployment,
    problems,
    observe: (n) => observations[n],
    agentStartedAt: T0 - 60_000,
    platform: { os: 'linux', architecture: 'x86_64', version: '0.1.0' },
  }) as Record<string, any>;
  assert.equal(r.schemaVersion, '1.1');
  assert.equal(r.lastDesiredVersion, 7);
  assert.deepEqual(r.lastDesiredStatus, { code: 200, description: '' });
  assert.deepEqual(r.runtime, {
    type: 'docker',
    settings: { minDockerVersion: 'v1.25' },
    platform: { os: 'linux', architecture: 'x86_64', version: '0.1.0' },
  });
  assert.ok(!JSON.stringify(r).includes('secret'), 'registry passwords are never reported');
  assert.equal(r.systemModules.edgeAgent.runtimeStatus, 'running');
  assert.equal(r.systemModules.edgeAgent.lastStartTimeUtc, '2026-12-07T05:59:00.000Z');
  assert.equal(r.systemModules.edgeHub.settings.image, 'mcr.microsoft.com/azureiotedge-hub:1.2');
  assert.deepEqual(r.modules.sensor, {
    runtimeStatus: 'running',
    statusDescription: 'Up 5 seconds',
    lastStartTimeUtc: '2026-12-07T06:00:00.000Z',
    restartCount: 0,
    version: '1.0',
    type: 'docker',
    settings: { image: 'r.test/sensor:1', createOptions: '{"Env":["A=1"]}' },
    status: 'running',
    restartPolicy: 'always',
    imagePullPolicy: 'on-create',
  });
  assert.deepEqual(r.modules.crashy, {
    runtimeStatus: 'backoff',
    exitCode: 1,
    statusDescription: 'Backing off for 36 seconds',
    lastStartTimeUtc: '2026-12-07T06:00:00.000Z',
    lastExitTimeUtc: '2026-12-07T06:00:01.000Z',
    restartCount: 2,
    lastRestartTimeUtc: '2026-12-07T06:00:00.000Z',
    type: 'process',
    settings: { command: 'false' },
    status: 'running',
    restartPolicy: 'always',
  });
});

test('a module with a bad field: 400 naming module and field; the others are reported as usual', () => {
  const { deployment, problems } = readAgentDesired(
    desired({ broken: { type: 'docker', restartPolicy: 'sometimes', settings: { image: 'x:1', createOptions: '{' } } }),
  );
  const r = buildAgentReported({
    desiredVersion: 8,
    deployment,
    problems,
    observe: (n) => observations[n],
    agentStartedAt: T0,
  }) as Record<string, any>;
  assert.equal(r.lastDesiredStatus.code, 400);
  assert.match(r.lastDesiredStatus.description, /module broken: restartPolicy: "sometimes" is not one of/);
  assert.match(r.lastDesiredStatus.description, /module broken: settings\.createOptions: is not valid JSON/);
  assert.equal(r.modules.broken.runtimeStatus, 'unknown');
  assert.match(r.modules.broken.statusDescription, /restartPolicy: .*; settings\.createOptions: /);
  assert.equal(r.modules.sensor.runtimeStatus, 'running');
});

test('a module that could not be pulled: 500 naming it; a refused document: 400 or 412', () => {
  const { deployment, problems } = readAgentDesired(desired());
  const failed = lastDesiredStatus({
    desiredVersion: 1,
    deployment,
    problems,
    failures: [{ module: 'sensor', field: 'settings.image', message: 'pull failed: manifest unknown' }],
    observe: () => undefined,
    agentStartedAt: T0,
  });
  assert.deepEqual(failed, { code: 500, description: 'module sensor: settings.image: pull failed: manifest unknown' });
  let err: AgentManifestError | undefined;
  try {
    readAgentDesired({ schemaVersion: '9' });
  } catch (e) {
    err = e as AgentManifestError;
  }
  const r = buildAgentReported({
    desiredVersion: 2,
    manifestError: err,
    problems: [],
    observe: () => undefined,
    agentStartedAt: T0,
  }) as Record<string, any>;
  assert.equal(r.lastDesiredStatus.code, 412);
  assert.match(r.lastDesiredStatus.description, /schemaVersion "9"/);
  assert.deepEqual(r.modules, {});
  const bad = lastDesiredStatus({
    desiredVersion: 2,
    manifestError: new AgentManifestError('modules', 'modules is not an object of modules by name'),
    problems: [],
    observe: () => undefined,
    agentStartedAt: T0,
  });
  assert.equal(bad.code, 400);
  let empty: AgentManifestError | undefined;
  try {
    readAgentDesired({ $version: 1 });
  } catch (e) {
    empty = e as AgentManifestError;
  }
  const none = lastDesiredStatus({
    desiredVersion: 1,
    manifestError: empty,
    problems: [],
    observe: () => undefined,
    agentStartedAt: T0,
  });
  assert.equal(none.code, 417);
});

test('a module not created yet is unknown', () => {
  const { deployment, problems } = readAgentDesired(desired());
  const r = buildAgentReported({
    desiredVersion: 1,
    deployment,
    problems,
    observe: () => undefined,
    agentStartedAt: T0,
  }) as Record<string, any>;
  assert.equal(r.modules.sensor.runtimeStatus, 'unknown');
  assert.equal(r.modules.sensor.restartCount, 0);
});

test('the patch clears a removed module and fields no longer known with null', () => {
  const prev = {
    lastDesiredVersion: 1,
    modules: { a: { runtimeStatus: 'failed', exitCode: 1 }, gone: { runtimeStatus: 'running' } },
  };
  const next = { lastDesiredVersion: 2, modules: { a: { runtimeStatus: 'running' } } };
  assert.deepEqual(reportedPatch(prev, next), {
    lastDesiredVersion: 2,
    modules: { a: { runtimeStatus: 'running', exitCode: null }, gone: null },
  });
  assert.deepEqual(reportedPatch(undefined, next), next);
});
