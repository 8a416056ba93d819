/**
 * Deeply nested twin documents (issue 17, finding 7). A hub and three gateway layers, each a
 * child process. A twin patch of 10,000 nested arrays is refused with a 400 that says why, at
 * the hub directly (MQTT and AMQP reported patches, the service REST API's twin PATCH and PUT,
 * module twins, a query nesting as deep) and through one and three layers, where it used to
 * overflow the stack (a 500, and through a gateway "the parent is unreachable"); every process
 * stays up, and a patch nested as deep as IoT Hub allows (10 levels, arrays counting) is still
 * accepted. A refusal the hub alone makes (reported properties over 32 KiB) reaches a device
 * one and three layers down with the hub's status and the hub's own words. A device answering
 * a direct method with 10,000 nested arrays gets its caller a 400, directly and through a
 * gateway (whose relay used to throw outside any handler, taking the gateway down).
 */
import assert from 'node:assert/strict';
import { request as httpsRequest } from 'node:https';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import { createSasToken } from '../../src/identity/sas.ts';
import { SERVICE_API_VERSION } from '../../src/hub/service-client.ts';
import { newKey, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import type { HubProcess } from '../helpers/hub.ts';
import { connackOf } from '../helpers/mqtt-leaf.ts';
import { chainAddresses, startChain } from '../helpers/nested.ts';
import { eventually, openSdkLeaf, updateReported } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Mqtt } = require('azure-iot-device-mqtt');
const { Amqp } = require('azure-iot-device-amqp');
const mqtt = require('mqtt') as any;

const [hubAddr, l1Addr, l2Addr, l3Addr] = chainAddresses();

let hub: HubProcess;
const layers: EdgeSetup[] = [];
const gws: Array<GatewayProcess | undefined> = [];
const cleanups: Array<() => unknown> = [];

before(async () => {
  hub = await startChain('depth', [hubAddr, l1Addr, l2Addr, l3Addr], { layers, gws, cleanups });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

const svc = () => layers[0]!.svc;
const DEPTH = 10_000;
/** `[[[...]]]`, `n` arrays deep, as text: JSON.stringify itself overflows long before 10,000 levels. */
const arraysText = (n: number): string => '['.repeat(n) + ']'.repeat(n);
/** As deep as a client's own JSON.stringify can still write (an SDK serialises the patch itself). */
const SDK_DEPTH = 1_000;
const nestedArrays = (n: number): unknown => JSON.parse(arraysText(n));
/** Objects and arrays alternating, `n` containers below the section: the deepest IoT Hub allows at n = 10. */
function legalNesting(n: number): Record<string, unknown> {
  let v: unknown = 'bottom';
  for (let i = n; i >= 1; i--) v = i % 2 === 0 ? [v, i] : { [`level${i}`]: v };
  return { nested: v };
}
const TOO_DEEP = /nests objects or arrays deeper than 10 levels/;

async function directDevice(id: string): Promise<{ deviceId: string; key: string; connectionString: string }> {
  const key = newKey();
  await svc().createDevice({
    deviceId: id,
    authentication: { type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: newKey() } },
  } as never);
  return { deviceId: id, key, connectionString: `HostName=${hub.hostname};DeviceId=${id};SharedAccessKey=${key}` };
}

/** One service REST call with a body given as text; resolves with the status and the parsed answer. */
function rawServiceCall(method: string, path: string, bodyText: string): Promise<{ status: number; message: string }> {
  const c = svc().connection;
  const token = createSasToken(c.host, c.key, Math.floor(Date.now() / 1000) + 3600, c.policyName);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        method,
        host: hubAddr,
        port: 443,
        path: `${path}?api-version=${SERVICE_API_VERSION}`,
        ca: hub.caPem,
        headers: { Authorization: token, 'Content-Type': 'application/json' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let message = text;
          try {
            const j = JSON.parse(text) as { Message?: string; message?: string };
            message = j.Message ?? j.message ?? text;
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode ?? 0, message });
        });
      },
    );
    req.on('error', reject);
    req.end(bodyText);
  });
}

/** Sends one reported patch over raw MQTT to `address` (the hub or a gateway) and returns the status IoT Hub's twin response topic carries, and its body. */
async function rawReportedPatch(
  address: string,
  deviceId: string,
  key: string,
  payload: string,
): Promise<{ status: number; body: string }> {
  const token = createSasToken(`${hub.hostname}/devices/${deviceId}`, key, Math.floor(Date.now() / 1000) + 3600);
  const client = mqtt.connect(`mqtts://${address}:8883`, {
    ca: hub.caPem,
    clientId: deviceId,
    username: `${hub.hostname}/${deviceId}/?api-version=2021-04-12`,
    password: token,
    protocolVersion: 4,
    reconnectPeriod: 0,
  });
  try {
    await connackOf(client);
    const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no twin response from ${address} within 30 s`)), 30_000);
      client.on('message', (topic: string, body: Buffer) => {
        const m = /^\$iothub\/twin\/res\/(\d+)\/\?\$rid=deep1/.exec(topic);
        if (!m) return;
        clearTimeout(timer);
        resolve({ status: Number(m[1]), body: body.toString('utf8') });
      });
    });
    await new Promise<void>((res, rej) =>
      client.subscribe('$iothub/twin/res/#', { qos: 0 }, (err?: Error) => (err ? rej(err) : res())),
    );
    client.publish('$iothub/twin/PATCH/properties/reported/?$rid=deep1', payload, { qos: 0 });
    return await answer;
  } finally {
    client.end(true);
  }
}

/** A raw MQTT device at `address` that answers every direct method with `answer` (text, sent as is). */
async function rawMethodAnswerer(
  address: string,
  deviceId: string,
  key: string,
  answer: string,
): Promise<{ end(): void }> {
  const token = createSasToken(`${hub.hostname}/devices/${deviceId}`, key, Math.floor(Date.now() / 1000) + 3600);
  const client = mqtt.connect(`mqtts://${address}:8883`, {
    ca: hub.caPem,
    clientId: deviceId,
    username: `${hub.hostname}/${deviceId}/?api-version=2021-04-12`,
    password: token,
    protocolVersion: 4,
    reconnectPeriod: 0,
  });
  await connackOf(client);
  client.on('message', (topic: string) => {
    const rid = /\?\$rid=([^&]+)/.exec(topic)?.[1];
    if (rid) client.publish(`$iothub/methods/res/200/?$rid=${rid}`, answer, { qos: 0 });
  });
  await new Promise<void>((res, rej) =>
    client.subscribe('$iothub/methods/POST/#', { qos: 0 }, (err?: Error) => (err ? rej(err) : res())),
  );
  return { end: () => client.end(true) };
}

function stillUp(): void {
  assert.equal(hub.proc.exitCode, null, `the hub exited:\n${hub.output()}`);
  for (const [i, gw] of gws.entries()) assert.equal(gw?.proc.exitCode, null, `gateway L${i + 1} exited`);
}

describe('deeply nested twin documents', { timeout: 180_000 }, () => {
  test('at the hub: 10,000 nested arrays are a 400 on every way a twin enters, the hub stays up, 10 levels are accepted', async (t) => {
    const dev = await directDevice('depth-direct');
    // MQTT, raw: the status on the twin response topic.
    const raw = await rawReportedPatch(hubAddr, dev.deviceId, dev.key, `{"deep":${arraysText(DEPTH)}}`);
    assert.equal(raw.status, 400, raw.body);
    assert.match(JSON.parse(raw.body).message, TOO_DEEP);

    // The official SDK over MQTT and AMQP.
    for (const Transport of [Mqtt, Amqp]) {
      const client = await openSdkLeaf(t, dev.connectionString, Transport, hub.caPem);
      const twin = await client.getTwin();
      await assert.rejects(updateReported(twin, { deep: nestedArrays(SDK_DEPTH) }), (err: Error) =>
        TOO_DEEP.test(err.message),
      );
      await updateReported(twin, legalNesting(10));
      await client.close();
    }
    assert.deepEqual((await svc().getTwin(dev.deviceId)).properties?.reported?.nested, legalNesting(10).nested);

    // The service REST API: twin PATCH and PUT, module twins, tags.
    await svc().createModule({ deviceId: dev.deviceId, moduleId: 'm' } as never);
    const deep = arraysText(DEPTH);
    const refusals: Array<[string, string, string]> = [
      ['PATCH', `/twins/${dev.deviceId}`, `{"properties":{"desired":{"deep":${deep}}}}`],
      ['PUT', `/twins/${dev.deviceId}`, `{"properties":{"desired":{"deep":${deep}}}}`],
      ['PATCH', `/twins/${dev.deviceId}`, `{"tags":{"deep":${deep}}}`],
      ['PATCH', `/twins/${dev.deviceId}/modules/m`, `{"properties":{"desired":{"deep":${deep}}}}`],
      ['PUT', `/twins/${dev.deviceId}/modules/m`, `{"properties":{"desired":{"deep":${deep}}}}`],
      ['PATCH', `/twins/${dev.deviceId}`, JSON.stringify({ properties: { desired: { eleven: [legalNesting(10)] } } })],
    ];
    for (const [method, path, body] of refusals) {
      const r = await rawServiceCall(method, path, body);
      assert.equal(r.status, 400, `${method} ${path}: ${r.message}`);
      assert.match(r.message, TOO_DEEP);
    }
    // A query nesting as deep is a syntax error, not a stack overflow.
    const q = await rawServiceCall(
      'POST',
      '/devices/query',
      JSON.stringify({ query: `SELECT * FROM devices WHERE tags.x IN ${deep}` }),
    );
    assert.equal(q.status, 400, q.message);
    assert.match(q.message, /nests more than 200 levels/);
    // Other bodies (a device record) are bounded too.
    const d = await rawServiceCall('PUT', '/devices/depth-odd', `{"deviceId":"depth-odd","capabilities":${deep}}`);
    assert.equal(d.status, 400, d.message);
    await svc().request('PATCH', `/twins/${dev.deviceId}`, {
      body: { tags: legalNesting(10), properties: { desired: legalNesting(10) } },
    });
    await svc().request('PATCH', `/twins/${dev.deviceId}/modules/m`, {
      body: { properties: { desired: legalNesting(10) } },
    });
    assert.deepEqual((await svc().getTwin(dev.deviceId)).properties?.desired?.nested, legalNesting(10).nested);
    stillUp();
  });

  for (const [layer, address] of [
    [1, l1Addr],
    [3, l3Addr],
  ] as const) {
    test(`through ${layer === 1 ? 'one layer' : 'three layers'}: 10,000 nested arrays are a 400 that says why, not "the parent is unreachable"; 10 levels reach the hub`, async (t) => {
      const leaf = await layers[layer - 1]!.createLeaf(`depth-leaf-l${layer}`);
      await eventually(
        `the leaf known at L${layer}`,
        async () => {
          const r = await rawReportedPatch(address, leaf.deviceId, leaf.key, `{"deep":${arraysText(DEPTH)}}`).catch(
            () => undefined,
          );
          if (!r) return undefined;
          assert.equal(r.status, 400, r.body);
          assert.match(JSON.parse(r.body).message, TOO_DEEP);
          assert.doesNotMatch(r.body, /unreachable/);
          return true;
        },
        30_000,
        500,
      );

      const client = await openSdkLeaf(t, leaf.connectionString, Mqtt, hub.caPem);
      const twin = await client.getTwin();
      await assert.rejects(
        updateReported(twin, { deep: nestedArrays(SDK_DEPTH) }),
        (err: Error) => TOO_DEEP.test(err.message) && !/unreachable/.test(err.message),
      );
      await updateReported(twin, legalNesting(10));
      await eventually('the legal patch at the hub', async () => {
        const reported = (await svc().getTwin(leaf.deviceId)).properties?.reported;
        return JSON.stringify(reported?.nested) === JSON.stringify(legalNesting(10).nested);
      });
      stillUp();
    });
  }

  test("a refusal only the hub makes (reported properties over 32 KiB) reaches a device one and three layers down as a 400 in the hub's own words", async (t) => {
    const patch = JSON.stringify({ big: 'x'.repeat(33 * 1024) });
    const direct = await directDevice('depth-size-direct');
    const atHub = await rawReportedPatch(hubAddr, direct.deviceId, direct.key, patch);
    assert.equal(atHub.status, 400, atHub.body);
    const hubWords = JSON.parse(atHub.body).message as string;
    assert.match(hubWords, /32768 bytes/);

    for (const [layer, address] of [
      [1, l1Addr],
      [3, l3Addr],
    ] as const) {
      const leaf = await layers[layer - 1]!.createLeaf(`depth-size-l${layer}`);
      const relayed = await eventually(
        `a twin answer from L${layer}`,
        () => rawReportedPatch(address, leaf.deviceId, leaf.key, patch).catch(() => undefined),
        30_000,
        500,
      );
      assert.equal(relayed.status, 400, `L${layer}: ${relayed.body}`);
      assert.equal(JSON.parse(relayed.body).message, hubWords, `L${layer} passes the hub's words on unchanged`);

      const client = await openSdkLeaf(t, leaf.connectionString, Mqtt, hub.caPem);
      const twin = await client.getTwin();
      await assert.rejects(updateReported(twin, JSON.parse(patch)), (err: Error) => err.message === hubWords);
    }
    stillUp();
  });

  test('a device answering a direct method with 10,000 nested arrays: a 400 for the caller, directly and through a gateway, which stays up', async () => {
    const answer = `{"deep":${arraysText(DEPTH)}}`;
    const direct = await directDevice('depth-method-direct');
    const a = await rawMethodAnswerer(hubAddr, direct.deviceId, direct.key, answer);
    try {
      const r = await rawServiceCall(
        'POST',
        `/twins/${direct.deviceId}/methods`,
        JSON.stringify({ methodName: 'm', payload: {}, responseTimeoutInSeconds: 20, connectTimeoutInSeconds: 10 }),
      );
      assert.equal(r.status, 400, r.message);
      assert.match(r.message, /nests objects or arrays deeper than 100 levels/);
    } finally {
      a.end();
    }

    // Through L1 the failure is the method's answer (as every relayed method failure is), and L1 lives on.
    const leaf = await layers[0]!.createLeaf('depth-method-l1');
    const b = await eventually(
      'the leaf connected to L1',
      () => rawMethodAnswerer(l1Addr, leaf.deviceId, leaf.key, answer).catch(() => undefined),
      30_000,
      500,
    );
    try {
      const relayed = await eventually(
        'a method answer through L1',
        async () => {
          const r = await rawServiceCall(
            'POST',
            `/twins/${leaf.deviceId}/methods`,
            JSON.stringify({ methodName: 'm', payload: {}, responseTimeoutInSeconds: 20, connectTimeoutInSeconds: 10 }),
          );
          return r.status === 404 ? undefined : r;
        },
        60_000,
        1000,
      );
      assert.equal(relayed.status, 200, relayed.message);
      const result = JSON.parse(relayed.message) as { status: number; payload: { message?: string } };
      assert.equal(result.status, 400, JSON.stringify(result));
      assert.match(result.payload.message ?? '', /nests objects or arrays deeper than 100 levels/);
    } finally {
      b.end();
    }
    stillUp();
  });
});
