/**
 * Reading `$edgeAgent` desired properties (issue 19): the seeds' manifest shape in schema 1.0
 * and 1.1, createOptions split over createOptions01.., `$upstream` images, registry
 * credentials, the process extension, and every bad field named with its module while the
 * other modules still deploy.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  AgentManifestError,
  imageRegistry,
  joinCreateOptions,
  MAX_STARTUP_ORDER,
  namesParentRegistry,
  readAgentDesired,
  resolveUpstream,
  specHashOf,
} from '../../src/agent/manifest.ts';

const PORTS = '{"HostConfig":{"PortBindings":{"5000/tcp":[{"HostPort":"5000"}]}}}';

/** The seeds' deployment: a registry module and the API proxy, with the system modules. */
function seedsDesired(): Record<string, any> {
  return {
    schemaVersion: '1.1',
    runtime: { type: 'docker', settings: { minDockerVersion: 'v1.25' } },
    systemModules: {
      edgeAgent: {
        type: 'docker',
        settings: { image: 'mcr.microsoft.com/azureiotedge-agent:1.2', createOptions: '{}' },
      },
      edgeHub: {
        type: 'docker',
        status: 'running',
        restartPolicy: 'always',
        settings: { image: 'mcr.microsoft.com/azureiotedge-hub:1.2', createOptions: '{}' },
        env: {},
      },
    },
    modules: {
      dockerContainerRegistry: {
        settings: { image: 'registry:latest', createOptions: PORTS },
        type: 'docker',
        version: '1.0',
        env: { REGISTRY_PROXY_REMOTEURL: { value: 'https://example.test' } },
        status: 'running',
        restartPolicy: 'always',
      },
      IoTEdgeAPIProxy: {
        settings: {
          image: 'mcr.microsoft.com/azureiotedge-api-proxy:1.0',
          createOptions: '{"HostConfig": {"PortBindings": {"443/tcp": [{"HostPort":"443"}]}}}',
        },
        type: 'docker',
        env: { NGINX_DEFAULT_PORT: { value: '443' }, DOCKER_REQUEST_ROUTE_ADDRESS: { value: 'registry:5000' } },
        status: 'running',
        restartPolicy: 'always',
        version: '1.0',
      },
    },
  };
}

test("the seeds' manifest reads into two docker modules; edgeAgent and edgeHub are recognised, not run", () => {
  const { deployment, problems } = readAgentDesired(seedsDesired());
  assert.deepEqual(problems, []);
  assert.equal(deployment.schemaVersion, '1.1');
  assert.equal(deployment.runtime.settings.minDockerVersion, 'v1.25');
  assert.deepEqual(
    deployment.systemModules.map((s) => [s.name, s.image]),
    [
      ['edgeAgent', 'mcr.microsoft.com/azureiotedge-agent:1.2'],
      ['edgeHub', 'mcr.microsoft.com/azureiotedge-hub:1.2'],
    ],
  );
  assert.deepEqual(
    deployment.modules.map((m) => m.name),
    ['IoTEdgeAPIProxy', 'dockerContainerRegistry'],
  );
  const registry = deployment.modules.find((m) => m.name === 'dockerContainerRegistry')!;
  assert.equal(registry.type, 'docker');
  assert.equal(registry.status, 'running');
  assert.equal(registry.restartPolicy, 'always');
  assert.equal(registry.version, '1.0');
  assert.equal(registry.imagePullPolicy, 'on-create');
  assert.equal(registry.startupOrder, MAX_STARTUP_ORDER);
  assert.deepEqual(registry.settings.createOptions, JSON.parse(PORTS));
  assert.deepEqual(registry.env, { REGISTRY_PROXY_REMOTEURL: 'https://example.test' });
  assert.equal(registry.spec.name, 'dockerContainerRegistry');
  assert.equal(registry.spec.image, 'registry:latest');
  assert.deepEqual(registry.spec.createOptions, JSON.parse(PORTS));
  assert.equal(registry.spec.imagePullPolicy, 'on-create');
  assert.match(registry.spec.specHash, /^[0-9a-f]{32}$/);
});

test('schema 1.0 is read as well; other schema versions are refused whole with 412', () => {
  const d = seedsDesired();
  d.schemaVersion = '1.0';
  assert.equal(readAgentDesired(d).deployment.schemaVersion, '1.0');
  for (const v of ['2.0', 1.1, undefined]) {
    d.schemaVersion = v;
    assert.throws(
      () => readAgentDesired(d),
      (e: unknown) => e instanceof AgentManifestError && e.field === 'schemaVersion' && e.status === 412,
    );
  }
});

test('a document that is not a deployment is refused naming the field', () => {
  assert.throws(() => readAgentDesired('x'), AgentManifestError);
  const check = (mutate: (d: Record<string, any>) => void, field: string) => {
    const d = seedsDesired();
    mutate(d);
    assert.throws(
      () => readAgentDesired(d),
      (e: unknown) => e instanceof AgentManifestError && e.field === field,
      field,
    );
  };
  check((d) => (d.modules = []), 'modules');
  check((d) => (d.runtime.type = 'kubernetes'), 'runtime.type');
  check(
    (d) => (d.runtime.settings.registryCredentials = { acr: { address: 'a.test', username: 'u' } }),
    'runtime.settings.registryCredentials.acr.password',
  );
});

test('desired properties with nothing but $version are no deployment yet: 417', () => {
  assert.throws(
    () => readAgentDesired({ $version: 1, $metadata: {} }),
    (e: unknown) => e instanceof AgentManifestError && e.status === 417 && /no deployment/.test(e.message),
  );
});

test('no modules at all is an empty deployment, not an error', () => {
  const { deployment, problems } = readAgentDesired({ schemaVersion: '1.1', runtime: { type: 'docker' } });
  assert.deepEqual(deployment.modules, []);
  assert.deepEqual(problems, []);
});

test('createOptions split over createOptions01, createOptions02 .. is joined in numeric order', () => {
  const full = JSON.stringify({ Env: ['A=1'], HostConfig: { Binds: ['/tmp:/tmp'], Privileged: false } });
  const pieces = [full.slice(0, 7), full.slice(7, 20), full.slice(20, 31), full.slice(31)];
  const d = seedsDesired();
  // Written out of order on purpose: the object's key order must not matter.
  d.modules.dockerContainerRegistry.settings = {
    image: 'registry:2',
    createOptions02: pieces[2],
    createOptions: pieces[0],
    createOptions03: pieces[3],
    createOptions01: pieces[1],
  };
  const { deployment, problems } = readAgentDesired(d);
  assert.deepEqual(problems, []);
  const m = deployment.modules.find((x) => x.name === 'dockerContainerRegistry')!;
  assert.deepEqual(m.spec.createOptions, JSON.parse(full));
  assert.equal(
    joinCreateOptions({ createOptions: 'a', createOptions01: 'b', createOptions10: 'x' }).field,
    'settings.createOptions02',
  );
});

test('createOptions pieces with a gap, a non-string piece, or no first piece are named', () => {
  const gap = joinCreateOptions({ createOptions: '{', createOptions02: '}' });
  assert.equal(gap.field, 'settings.createOptions01');
  assert.match(gap.error!, /missing but createOptions02 is given/);
  assert.equal(joinCreateOptions({ createOptions: '{', createOptions01: 5 }).field, 'settings.createOptions01');
  assert.equal(joinCreateOptions({ createOptions01: '{}' }).field, 'settings.createOptions01');
  assert.equal(joinCreateOptions({ createOptions: {} }).field, 'settings.createOptions');
  assert.deepEqual(joinCreateOptions({}), {});
});

test('a bad module is reported with its field; the other modules still deploy', () => {
  const cases: Array<[string, (m: Record<string, any>) => void, string, RegExp]> = [
    [
      'invalid createOptions JSON',
      (m) => (m.settings.createOptions = '{"HostConfig": '),
      'settings.createOptions',
      /not valid JSON/,
    ],
    [
      'createOptions not an object',
      (m) => (m.settings.createOptions = '[1]'),
      'settings.createOptions',
      /not a JSON object/,
    ],
    [
      'unknown restartPolicy',
      (m) => (m.restartPolicy = 'sometimes'),
      'restartPolicy',
      /"sometimes" is not one of never, on-failure, on-unhealthy, always/,
    ],
    ['bad status', (m) => (m.status = 'paused'), 'status', /"paused" is not one of running, stopped/],
    ['bad imagePullPolicy', (m) => (m.imagePullPolicy = 'always'), 'imagePullPolicy', /not one of on-create, never/],
    ['missing image', (m) => delete m.settings.image, 'settings.image', /missing/],
    ['unknown type', (m) => (m.type = 'vm'), 'type', /"vm" is not a module type/],
    ['missing type', (m) => delete m.type, 'type', /undefined is not a module type/],
    ['negative startupOrder', (m) => (m.startupOrder = -1), 'startupOrder', /whole number/],
    ['fractional startupOrder', (m) => (m.startupOrder = 1.5), 'startupOrder', /whole number/],
    ['env value missing', (m) => (m.env = { A: {} }), 'env.A.value', /missing/],
    ['env not an object', (m) => (m.env = ['A=1']), 'env', /not an object/],
    ['version not a string', (m) => (m.version = 1), 'version', /not a string/],
  ];
  for (const [what, mutate, field, says] of cases) {
    const d = seedsDesired();
    mutate(d.modules.dockerContainerRegistry);
    const { deployment, problems } = readAgentDesired(d);
    assert.equal(problems.length, 1, `${what}: ${JSON.stringify(problems)}`);
    assert.equal(problems[0]!.module, 'dockerContainerRegistry', what);
    assert.equal(problems[0]!.field, field, what);
    assert.match(problems[0]!.message, says, what);
    assert.deepEqual(
      deployment.modules.map((m) => m.name),
      ['IoTEdgeAPIProxy'],
      what,
    );
  }
});

test('a module name that is not a valid module identity, or is reserved, is refused', () => {
  for (const name of ['bad/name', 'sp ace', '$custom', 'x'.repeat(129)]) {
    const d = seedsDesired();
    d.modules[name] = d.modules.dockerContainerRegistry;
    const { deployment, problems } = readAgentDesired(d);
    assert.deepEqual(
      problems.map((p) => [p.module, p.field]),
      [[name, 'name']],
      name,
    );
    assert.equal(deployment.modules.length, 2, name);
  }
});

test('several problems in one module are all named; a module that is not an object too', () => {
  const d = seedsDesired();
  d.modules.dockerContainerRegistry.restartPolicy = 'x';
  d.modules.dockerContainerRegistry.settings.createOptions = '{';
  d.modules.broken = 'docker';
  const { problems } = readAgentDesired(d);
  assert.deepEqual(problems.map((p) => `${p.module}:${p.field}`).sort(), [
    'broken:',
    'dockerContainerRegistry:restartPolicy',
    'dockerContainerRegistry:settings.createOptions',
  ]);
});

test('enumerated fields are read in any letter case, as IoT Edge does', () => {
  const d = seedsDesired();
  Object.assign(d.modules.dockerContainerRegistry, {
    restartPolicy: 'On-Failure',
    status: 'Stopped',
    imagePullPolicy: 'Never',
  });
  const m = readAgentDesired(d).deployment.modules.find((x) => x.name === 'dockerContainerRegistry')!;
  assert.equal(m.restartPolicy, 'on-failure');
  assert.equal(m.status, 'stopped');
  assert.equal(m.imagePullPolicy, 'never');
  assert.equal(m.spec.imagePullPolicy, 'never');
});

test('defaults for left-out fields: status running, restartPolicy on-unhealthy, last in startup order', () => {
  const { deployment } = readAgentDesired({
    schemaVersion: '1.1',
    modules: { m: { type: 'docker', settings: { image: 'alpine:3' } } },
  });
  const m = deployment.modules[0]!;
  assert.equal(m.status, 'running');
  assert.equal(m.restartPolicy, 'on-unhealthy');
  assert.equal(m.startupOrder, MAX_STARTUP_ORDER);
  assert.deepEqual(m.spec.createOptions, {});
  assert.deepEqual(m.env, {});
});

test('modules come out in startupOrder, lower first, then by name', () => {
  const mod = (startupOrder?: number) => ({ type: 'docker', settings: { image: 'alpine:3' }, startupOrder });
  const { deployment } = readAgentDesired({
    schemaVersion: '1.1',
    modules: { last: mod(), b: mod(1), a: mod(1), first: mod(0), mid: mod(20) },
  });
  assert.deepEqual(
    deployment.modules.map((m) => m.name),
    ['first', 'a', 'b', 'mid', 'last'],
  );
});

test('$upstream in an image is the parent; without a parent the module is refused', () => {
  assert.equal(
    resolveUpstream('$upstream:443/azureiotedge-api-proxy:1.0', 'gw-l4'),
    'gw-l4:443/azureiotedge-api-proxy:1.0',
  );
  assert.equal(resolveUpstream('$upstream/x:1', 'p'), 'p/x:1');
  assert.equal(resolveUpstream('$upstreamish/x:1', 'p'), '$upstreamish/x:1');
  const d = seedsDesired();
  d.modules.IoTEdgeAPIProxy.settings.image = '$upstream:443/azureiotedge-api-proxy:1.0';
  const withParent = readAgentDesired(d, { parentHostname: 'gw-l4.example' });
  const proxy = withParent.deployment.modules.find((m) => m.name === 'IoTEdgeAPIProxy')!;
  assert.equal(proxy.spec.image, 'gw-l4.example:443/azureiotedge-api-proxy:1.0');
  assert.equal(proxy.settings.image, '$upstream:443/azureiotedge-api-proxy:1.0');
  const top = readAgentDesired(d);
  assert.deepEqual(
    top.problems.map((p) => [p.module, p.field]),
    [['IoTEdgeAPIProxy', 'settings.image']],
  );
  assert.match(top.problems[0]!.message, /no parent/);
});

test('registry credentials go with images from that registry only', () => {
  assert.equal(imageRegistry('alpine:3'), undefined);
  assert.equal(imageRegistry('library/alpine:3'), undefined);
  assert.equal(imageRegistry('myacr.azurecr.io/filter:1'), 'myacr.azurecr.io');
  assert.equal(imageRegistry('localhost/filter:1'), 'localhost');
  assert.equal(imageRegistry('gw:5000/filter:1'), 'gw:5000');
  const d = seedsDesired();
  d.runtime.settings.registryCredentials = {
    acr: { address: 'https://MyAcr.azurecr.io/', username: 'u', password: 'p' },
  };
  d.modules.dockerContainerRegistry.settings.image = 'myacr.azurecr.io/registry:2';
  const { deployment } = readAgentDesired(d);
  const reg = deployment.modules.find((m) => m.name === 'dockerContainerRegistry')!;
  assert.deepEqual(reg.spec.registryAuth, { username: 'u', password: 'p', serveraddress: 'https://MyAcr.azurecr.io/' });
  const proxy = deployment.modules.find((m) => m.name === 'IoTEdgeAPIProxy')!;
  assert.equal(proxy.spec.registryAuth, undefined);
  assert.deepEqual(Object.keys(deployment.runtime.settings.registryCredentials), ['acr']);
});

test('process modules (a Strata extension) carry command, args and cwd', () => {
  const { deployment, problems } = readAgentDesired({
    schemaVersion: '1.1',
    modules: {
      sensor: {
        type: 'process',
        status: 'running',
        restartPolicy: 'always',
        settings: { command: 'node', args: ['sensor.js', '--rate', '5'], cwd: 'modules/sensor' },
        env: { RATE: { value: 5 } },
      },
      nocmd: { type: 'process', settings: { args: [] } },
      badargs: { type: 'process', settings: { command: 'node', args: 'sensor.js' } },
    },
  });
  assert.deepEqual(
    problems.map((p) => [p.module, p.field]),
    [
      ['nocmd', 'settings.command'],
      ['badargs', 'settings.args'],
    ],
  );
  const s = deployment.modules[0]!;
  assert.equal(s.spec.type, 'process');
  assert.equal(s.spec.command, 'node');
  assert.deepEqual(s.spec.args, ['sensor.js', '--rate', '5']);
  assert.equal(s.spec.cwd, 'modules/sensor');
  assert.deepEqual(s.spec.env, { RATE: '5' });
  assert.equal(s.spec.image, undefined);
});

test('specHash is stable across key order and changes with what the runtime needs', () => {
  const base = seedsDesired();
  const h = (d: Record<string, any>) =>
    readAgentDesired(d).deployment.modules.find((m) => m.name === 'dockerContainerRegistry')!.spec.specHash;
  const reordered = seedsDesired();
  reordered.modules.dockerContainerRegistry.settings.createOptions =
    '{"HostConfig":{"PortBindings":{"5000/tcp":[{"HostPort":"5000"}]}}}'.replace('"HostConfig"', ' "HostConfig"');
  assert.equal(h(base), h(reordered));
  const envChanged = seedsDesired();
  envChanged.modules.dockerContainerRegistry.env.NEW = { value: '1' };
  assert.notEqual(h(base), h(envChanged));
  const tagChanged = seedsDesired();
  tagChanged.modules.dockerContainerRegistry.settings.image = 'registry:2';
  assert.notEqual(h(base), h(tagChanged));
  const optsChanged = seedsDesired();
  optsChanged.modules.dockerContainerRegistry.settings.createOptions = '{}';
  assert.notEqual(h(base), h(optsChanged));
  // Desired status and restart policy are the agent's business, not the runtime's: no recreate.
  const stopped = seedsDesired();
  stopped.modules.dockerContainerRegistry.status = 'stopped';
  stopped.modules.dockerContainerRegistry.restartPolicy = 'never';
  assert.equal(h(base), h(stopped));
  // Key order inside createOptions does not matter either.
  assert.equal(
    specHashOf({ name: 'a', type: 'docker', env: {}, createOptions: { a: 1, b: 2 } }),
    specHashOf({ name: 'a', type: 'docker', env: {}, createOptions: { b: 2, a: 1 } }),
  );
  // Rotated registry credentials do not recreate a module.
  assert.equal(
    specHashOf({
      name: 'a',
      type: 'docker',
      env: {},
      registryAuth: { username: 'u', password: '1', serveraddress: 'r' },
    }),
    specHashOf({
      name: 'a',
      type: 'docker',
      env: {},
      registryAuth: { username: 'u', password: '2', serveraddress: 'r' },
    }),
  );
});

test('an unknown system module is named; edgeAgent and edgeHub are not', () => {
  const d = seedsDesired();
  d.systemModules.edgeRelay = { type: 'docker' };
  const { problems, deployment } = readAgentDesired(d);
  assert.deepEqual(
    problems.map((p) => [p.module, p.field]),
    [['edgeRelay', 'systemModules']],
  );
  assert.equal(deployment.systemModules.length, 2);
});

test('an image from the parent (what $upstream:443/... resolves to) signs in as the edge device', () => {
  assert.equal(namesParentRegistry('gw-l2.example:443/app:1', 'gw-l2.example'), true);
  assert.equal(namesParentRegistry('GW-L2.example/app:1', 'gw-l2.example'), true);
  assert.equal(namesParentRegistry('gw-l2.example:5000/app:1', 'gw-l2.example'), false);
  assert.equal(namesParentRegistry('gw-l2.example.other/app:1', 'gw-l2.example'), false);
  assert.equal(namesParentRegistry('registry.example/app:1', 'gw-l2.example'), false);
  assert.equal(namesParentRegistry('gw-l2.example:443/app:1', undefined), false);
});
