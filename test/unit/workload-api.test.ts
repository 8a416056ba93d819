import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { moduleEnv, overriddenEnv, withWorkload, workloadBind, workloadUriFor } from '../../src/agent/module-env.ts';
import { moduleDirName } from '../../src/agent/workload-api.ts';
import { handleWorkloadRequest, type WorkloadModule } from '../../src/agent/workload-routes.ts';
import { parseSasToken, signatureMatches } from '../../src/identity/sas.ts';

const key = randomBytes(32).toString('base64');
const caller: WorkloadModule = { moduleId: 'filter', generationId: '637000000000000001', primaryKey: key };
const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';

const post = (url: string, body: unknown) =>
  handleWorkloadRequest(caller, PEM, {
    method: 'POST',
    url,
    body: Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)),
  });
const signUrl = (moduleId = 'filter', genId = caller.generationId, version = '2018-06-28') =>
  `/modules/${encodeURIComponent(moduleId)}/genid/${genId}/sign?api-version=${version}`;

test('a digest from the sign route makes a SAS token that verifies with the module key', () => {
  const sr = 'hub.example/devices/edge-1/modules/filter';
  const se = 2_000_000_000;
  const toSign = `${encodeURIComponent(sr)}\n${se}`;
  const r = post(signUrl(), { keyId: 'primary', algo: 'HMACSHA256', data: Buffer.from(toSign).toString('base64') });
  assert.equal(r.status, 200);
  const token = `SharedAccessSignature sr=${encodeURIComponent(sr)}&sig=${encodeURIComponent(r.body.digest)}&se=${se}`;
  assert.ok(signatureMatches(parseSasToken(token), [key]));
  assert.ok(!signatureMatches(parseSasToken(token), [randomBytes(32).toString('base64')]));
});

test('every iotedged API version is accepted; none or an unknown one is a 400', () => {
  const body = { keyId: 'primary', algo: 'HMACSHA256', data: 'YQ==' };
  for (const v of ['2018-06-28', '2019-01-30', '2020-07-07', '2022-08-03'])
    assert.equal(post(signUrl('filter', caller.generationId, v), body).status, 200);
  assert.equal(post(signUrl('filter', caller.generationId, '2017-01-01'), body).status, 400);
  assert.deepEqual(post(`/modules/filter/genid/${caller.generationId}/sign`, body), {
    status: 400,
    body: { message: 'Invalid or missing API version' },
  });
});

test('signing for another module is 403, for another generation id 404, naming what is wrong', () => {
  const body = { keyId: 'primary', algo: 'HMACSHA256', data: 'YQ==' };
  const other = post(signUrl('sensor'), body);
  assert.equal(other.status, 403);
  assert.match(other.body.message, /'filter'.*'sensor'/);
  assert.equal(other.body.digest, undefined);
  const gen = post(signUrl('filter', '1'), body);
  assert.equal(gen.status, 404);
  assert.match(gen.body.message, /generation id '1'/);
});

test('bad bodies are refused with the field named', () => {
  const url = signUrl();
  assert.deepEqual(post(url, 'not json').status, 400);
  assert.match(post(url, { keyId: 'primary', algo: 'HMACSHA256' }).body.message, /data/);
  assert.match(post(url, { keyId: 'primary', algo: 'HMACSHA1', data: 'YQ==' }).body.message, /algo 'HMACSHA1'/);
  assert.equal(post(url, { keyId: 'secondary', algo: 'HMACSHA256', data: 'YQ==' }).status, 404);
  assert.equal(post(url, { keyId: 'primary', algo: 'HMACSHA256', data: 'not base64!' }).status, 422);
  assert.equal(post(`/modules/%E0%A4%A/genid/1/sign?api-version=2018-06-28`, {}).status, 400);
});

test('the trust bundle is the configured PEM; other routes and methods are refused', () => {
  const get = (method: string, url: string) =>
    handleWorkloadRequest(caller, PEM, { method, url, body: Buffer.alloc(0) });
  assert.deepEqual(get('GET', '/trust-bundle?api-version=2018-06-28'), { status: 200, body: { certificate: PEM } });
  assert.equal(get('POST', '/trust-bundle?api-version=2018-06-28').status, 405);
  assert.equal(get('GET', signUrl()).status, 405);
  assert.equal(get('GET', '/modules?api-version=2018-06-28').status, 404);
});

test("a module's environment: the deployment's variables, IoT Edge's winning", () => {
  const endpoint = {
    moduleId: 'filter',
    uri: 'unix:///run/strata/mnt/filter/workload.sock',
    socketPath: '/run/strata/mnt/filter/workload.sock',
    socketDir: '/run/strata/mnt/filter',
  };
  const deploymentEnv = { MODE: 'fast', IOTEDGE_DEVICEID: 'someone-else' };
  const env = moduleEnv({
    iothubHostName: 'hub.example',
    deviceId: 'edge-1',
    moduleId: 'filter',
    generationId: '637',
    gatewayHostName: 'edge-1.local',
    workloadUri: workloadUriFor(endpoint, 'docker'),
    deploymentEnv,
  });
  assert.deepEqual(env, {
    MODE: 'fast',
    IOTEDGE_IOTHUBHOSTNAME: 'hub.example',
    IOTEDGE_DEVICEID: 'edge-1',
    IOTEDGE_MODULEID: 'filter',
    IOTEDGE_MODULEGENERATIONID: '637',
    IOTEDGE_GATEWAYHOSTNAME: 'edge-1.local',
    IOTEDGE_WORKLOADURI: 'unix:///var/run/iotedge/workload.sock',
    IOTEDGE_APIVERSION: '2019-01-30',
    IOTEDGE_AUTHSCHEME: 'sasToken',
  });
  assert.deepEqual(overriddenEnv(deploymentEnv), ['IOTEDGE_DEVICEID']);
  assert.equal(workloadUriFor(endpoint, 'process'), endpoint.uri);
  assert.equal(workloadBind(endpoint), '/run/strata/mnt/filter:/var/run/iotedge');
  assert.throws(
    () => workloadUriFor({ moduleId: 'p', uri: 'http://127.0.0.1:1' }, 'docker'),
    /'p'.*unix workload socket/,
  );
});

type Spec = {
  name: string;
  type: 'docker' | 'process';
  env: Record<string, string>;
  createOptions?: Record<string, unknown>;
};

test('withWorkload: a container gets the IoT Edge env and its socket bound after its own binds; a process the served URI', () => {
  const endpoint = {
    moduleId: 'filter',
    uri: 'unix:///run/s/filter/workload.sock',
    socketPath: '/run/s/filter/workload.sock',
    socketDir: '/run/s/filter',
  };
  const who = { iothubHostName: 'hub.example', deviceId: 'edge-1', generationId: '9', gatewayHostName: 'edge-1.local' };
  const spec: Spec = {
    name: 'filter',
    type: 'docker',
    env: { A: '1' },
    createOptions: { HostConfig: { Binds: ['/data:/data'], Privileged: false }, Labels: { x: 'y' } },
  };
  const docker = withWorkload(spec, endpoint, who);
  assert.deepEqual(docker.createOptions, {
    HostConfig: { Binds: ['/data:/data', '/run/s/filter:/var/run/iotedge'], Privileged: false },
    Labels: { x: 'y' },
  });
  assert.equal(docker.env.A, '1');
  assert.equal(docker.env.IOTEDGE_WORKLOADURI, 'unix:///var/run/iotedge/workload.sock');
  assert.equal(docker.env.IOTEDGE_MODULEID, 'filter');
  assert.deepEqual(
    withWorkload(docker, endpoint, who).createOptions,
    docker.createOptions,
    'applying twice binds once',
  );
  const proc = withWorkload<Spec>({ name: 'filter', type: 'process', env: {} }, endpoint, who);
  assert.equal(proc.env.IOTEDGE_WORKLOADURI, 'unix:///run/s/filter/workload.sock');
  assert.equal(proc.createOptions, undefined);
});

test("a module's socket directory is its id when that is a safe short segment, else a digest", () => {
  assert.equal(moduleDirName('/run/s', 'filter'), 'filter');
  for (const odd of ['..', '.', 'x'.repeat(128)]) {
    const name = moduleDirName('/run/s', odd);
    assert.match(name, /^m-[0-9a-f]{24}$/);
    assert.equal(moduleDirName('/run/s', odd), name, 'stable across restarts');
  }
  assert.notEqual(moduleDirName('/run/s', '..'), moduleDirName('/run/s', '.'));
});
