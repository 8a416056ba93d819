import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import deviceSdk from 'azure-iot-device';
import mqttSdk from 'azure-iot-device-mqtt';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import {
  createSasDevice,
  deviceToken,
  invokeWithSdk,
  rawRequest,
  serviceClient,
  serviceToken,
  type InvokeAnswer,
} from '../fixtures/service-messaging-helpers.ts';

/**
 * Direct methods end to end: the official service SDK (`azure-iothub` Client.invokeDeviceMethod,
 * in a child process trusting the hub's CA) calls devices and modules connected with the
 * official device SDK over MQTT.
 */

const { Client, ModuleClient } = deviceSdk;
const { Mqtt } = mqttSdk;

let hub: HubProcess;
let svc: ServiceClient;
const closers: Array<() => Promise<unknown>> = [];

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
});

after(async () => {
  for (const c of closers) await c().catch(() => undefined);
  svc?.close();
  await hub?.stop();
});

type MethodHandler = (
  request: { methodName: string; payload: unknown },
  response: { send(status: number, payload: unknown, done?: (err?: Error) => void): void },
) => void;

async function mqttDevice(cs: string, methods: Record<string, MethodHandler>): Promise<InstanceType<typeof Client>> {
  const client = Client.fromConnectionString(cs, Mqtt);
  closers.push(() => client.close());
  await client.setOptions({ ca: hub.caPem });
  await client.open();
  for (const [name, handler] of Object.entries(methods)) client.onDeviceMethod(name, handler as never);
  return client;
}

function ok(answer: InvokeAnswer): { status: number; payload: unknown } {
  assert.ok(answer.ok, `invoke failed: ${JSON.stringify(answer)}`);
  return answer.result;
}

function failed(answer: InvokeAnswer, status: number, name: RegExp, code: string): void {
  assert.ok(!answer.ok, `invoke should have failed: ${JSON.stringify(answer)}`);
  assert.equal(answer.error.statusCode, status, JSON.stringify(answer.error));
  assert.match(answer.error.name, name);
  assert.match(answer.error.body ?? '', new RegExp(`ErrorCode:${code};`));
}

const echo: MethodHandler = (request, response) =>
  response.send(200, { method: request.methodName, received: request.payload });

test('direct method round trip: invokeDeviceMethod reaches an MQTT device and returns its status and payload', async () => {
  const { cs } = await createSasDevice(svc, hub, 'meth-dev-1');
  await mqttDevice(cs, {
    echo,
    fail: (_req, res) => res.send(500, { reason: 'sensor offline' }),
  });
  // The SDK subscribes after open() returns; a connect timeout lets the first call wait for that.
  const first = ok(
    await invokeWithSdk(hub, 'meth-dev-1', {
      methodName: 'echo',
      payload: { n: 1, text: 'héllo' },
      connectTimeoutInSeconds: 10,
    }),
  );
  assert.deepEqual(first, { status: 200, payload: { method: 'echo', received: { n: 1, text: 'héllo' } } });

  // The device's own status travels in the body; the HTTP call itself succeeds.
  const [second, third] = await Promise.all([
    invokeWithSdk(hub, 'meth-dev-1', { methodName: 'fail', payload: null }),
    invokeWithSdk(hub, 'meth-dev-1', { methodName: 'echo', payload: 'just a string', responseTimeoutInSeconds: 10 }),
  ]);
  assert.deepEqual(ok(second), { status: 500, payload: { reason: 'sensor offline' } });
  assert.deepEqual(ok(third), { status: 200, payload: { method: 'echo', received: 'just a string' } });
});

test('module method round trip: invokeDeviceMethod with a module id reaches an MQTT module client', async () => {
  const { moduleCs } = await createSasDevice(svc, hub, 'meth-dev-2', { moduleId: 'worker' });
  const module = ModuleClient.fromConnectionString(moduleCs!, Mqtt);
  closers.push(() => module.close());
  await module.setOptions({ ca: hub.caPem });
  await module.open();
  module.onMethod('reset', ((req: { payload: unknown }, res: { send(s: number, p: unknown): void }) =>
    res.send(201, { reset: req.payload })) as never);
  const answer = ok(
    await invokeWithSdk(
      hub,
      'meth-dev-2',
      { methodName: 'reset', payload: { hard: true }, connectTimeoutInSeconds: 10 },
      'worker',
    ),
  );
  assert.deepEqual(answer, { status: 201, payload: { reset: { hard: true } } });
  // The device itself is not connected, so the same method on the device is refused.
  failed(await invokeWithSdk(hub, 'meth-dev-2', { methodName: 'reset' }), 404, /^Error$/, 'DeviceNotOnline');
});

test('404 when the target is not connected or does not exist; 504 when it does not answer in time', async () => {
  await createSasDevice(svc, hub, 'meth-offline');
  const { cs } = await createSasDevice(svc, hub, 'meth-silent');
  await mqttDevice(cs, { ignore: () => undefined });
  const started = Date.now();
  const [offline, unknown, silent] = await Promise.all([
    invokeWithSdk(hub, 'meth-offline', { methodName: 'echo' }),
    invokeWithSdk(hub, 'meth-nobody', { methodName: 'echo' }),
    invokeWithSdk(hub, 'meth-silent', {
      methodName: 'ignore',
      responseTimeoutInSeconds: 5,
      connectTimeoutInSeconds: 10,
    }),
  ]);
  failed(offline, 404, /^Error$/, 'DeviceNotOnline');
  failed(unknown, 404, /^(Error|DeviceNotFoundError)$/, '(DeviceNotFound|DeviceNotOnline)');
  failed(silent, 504, /^GatewayTimeoutError$/, 'GatewayTimeout');
  const took = Date.now() - started;
  assert.ok(took >= 4500 && took < 20_000, `the timeout took ${took} ms for a 5 s response timeout`);
});

test('a call with a connect timeout waits for the device to connect and then succeeds', async () => {
  const { cs } = await createSasDevice(svc, hub, 'meth-late');
  const pending = invokeWithSdk(hub, 'meth-late', {
    methodName: 'echo',
    payload: [1, 2, 3],
    connectTimeoutInSeconds: 20,
  });
  await new Promise((r) => setTimeout(r, 1500));
  await mqttDevice(cs, { echo });
  assert.deepEqual(ok(await pending), { status: 200, payload: { method: 'echo', received: [1, 2, 3] } });
});

test('bad method requests get IoT Hub errors: no policy token, a device token, a malformed body', async () => {
  const { key } = await createSasDevice(svc, hub, 'meth-bad');
  const path = '/twins/meth-bad/methods?api-version=2021-04-12';
  const json = { 'content-type': 'application/json; charset=utf-8' };
  const call = (headers: Record<string, string>, body: string) =>
    rawRequest(hub, { method: 'POST', path, headers: { ...json, ...headers }, body });
  const refusal = (r: { status: number; text: string }, status: number, code: string, text?: RegExp) => {
    assert.equal(r.status, status, r.text);
    const m = (JSON.parse(r.text) as { Message: string }).Message;
    assert.ok(m.startsWith(`ErrorCode:${code};`), m);
    if (text) assert.match(m, text);
  };
  const owner = { authorization: serviceToken(svc) };
  refusal(await call({}, '{"methodName":"x"}'), 401, 'IotHubUnauthorizedAccess');
  refusal(
    await call({ authorization: deviceToken(hub, key, 'meth-bad') }, '{"methodName":"x"}'),
    401,
    'IotHubUnauthorizedAccess',
    /policy/,
  );
  refusal(await call(owner, '{"methodName":'), 400, 'ArgumentInvalid', /not valid JSON/);
  refusal(await call(owner, '{"payload":1}'), 400, 'ArgumentInvalid', /methodName/);
  refusal(
    await call(owner, '{"methodName":"x","responseTimeoutInSeconds":"soon"}'),
    400,
    'ArgumentInvalid',
    /responseTimeoutInSeconds/,
  );
  refusal(
    await call(owner, '{"methodName":"x","connectTimeoutInSeconds":9999}'),
    400,
    'ArgumentInvalid',
    /connectTimeoutInSeconds/,
  );
  // The registry-only policy may not call methods.
  const { hubConnectionString } = await import('../../src/hub/local.ts');
  const { ServiceClient } = await import('../../src/hub/service-client.ts');
  const reader = new ServiceClient(hubConnectionString(hub.dataDir, 'registryRead'), { ca: hub.caPem });
  try {
    refusal(
      await call({ authorization: serviceToken(reader) }, '{"methodName":"x"}'),
      401,
      'IotHubUnauthorizedAccess',
      /ServiceConnect/,
    );
  } finally {
    reader.close();
  }
});
