/**
 * The parent's side of MQTT on-behalf-of, against a real hub process over TLS: an edge hub
 * opens one MQTT connection per downstream identity, with the target as client id, the target's
 * auth chain in the user name and its own `{edge}/$edgeHub` SAS token as the password. The hub
 * accepts exactly what the AMQP head accepts, and drops the connection when a registry change
 * withdraws the claim.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import { newKey, serviceClient, waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { connackOf } from '../helpers/mqtt-leaf.ts';

const require = createRequire(import.meta.url);
const mqtt = require('mqtt') as any;

let hub: HubProcess;
let svc: ServiceClient;
const edgeKey = newKey();
const otherEdgeKey = newKey();
const sas = (key = newKey()) => ({ type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: newKey() } });

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
  const edge = await svc.createDevice({
    deviceId: 'obo-edge',
    capabilities: { iotEdge: true },
    authentication: sas(edgeKey),
  } as never);
  const other = await svc.createDevice({
    deviceId: 'obo-other-edge',
    capabilities: { iotEdge: true },
    authentication: sas(otherEdgeKey),
  } as never);
  for (const id of ['obo-leaf', 'obo-leaf-2', 'obo-leaf-3'])
    await svc.createDevice({
      deviceId: id,
      deviceScope: edge.deviceScope,
      parentScopes: [edge.deviceScope],
      authentication: sas(),
    } as never);
  await svc.createModule({ deviceId: 'obo-leaf', moduleId: 'sensor', authentication: sas() } as never);
  await svc.createDevice({
    deviceId: 'obo-stranger',
    deviceScope: other.deviceScope,
    parentScopes: [other.deviceScope],
    authentication: sas(),
  } as never);
});

after(async () => {
  svc?.close();
  await hub?.stop();
});

function edgeHubToken(edgeId: string, key: string, ttlS = 3600): string {
  return createSasToken(
    `${hub.hostname}/devices/${edgeId}/modules/$edgeHub`,
    key,
    Math.floor(Date.now() / 1000) + ttlS,
  );
}

interface Connected {
  client: any;
  publish(topic: string, payload: string): Promise<void>;
  closed: Promise<void>;
  end(): void;
}

/** Connects as an edge hub acting for `clientId`; rejects with the CONNACK refusal (err.code) or the socket error. */
async function connectOnBehalf(o: {
  clientId: string;
  chain?: string;
  token: string;
  transport?: 'mqtts' | 'wss';
}): Promise<Connected> {
  const query = `api-version=2021-04-12${o.chain === undefined ? '' : `&auth-chain=${encodeURIComponent(o.chain)}`}`;
  const url = o.transport === 'wss' ? `wss://${hub.address}:443/$iothub/websocket` : `mqtts://${hub.address}:8883`;
  const client = mqtt.connect(url, {
    ca: hub.caPem,
    clientId: o.clientId,
    username: `${hub.hostname}/${o.clientId}/?${query}`,
    password: o.token,
    protocolVersion: 4,
    clean: true,
    reconnectPeriod: 0,
    rejectUnauthorized: true,
    ...(o.transport === 'wss' ? { wsOptions: { ca: hub.caPem } } : {}),
  });
  await connackOf(client);
  const closed = new Promise<void>((r) => client.once('close', () => r()));
  return {
    client,
    closed,
    publish: (topic, payload) =>
      new Promise<void>((res, rej) =>
        client.publish(topic, payload, { qos: 1 }, (err?: Error) => (err ? rej(err) : res())),
      ),
    end: () => client.end(true),
  };
}

async function refusal(p: Promise<Connected>): Promise<number | undefined> {
  try {
    const c = await p;
    c.end();
  } catch (err) {
    return (err as { code?: number }).code;
  }
  assert.fail('the connection was accepted');
}

async function eventually(what: string, check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test("a child's connection made by its edge hub is accepted; its telemetry reaches the event stream as the child's own", async () => {
  const c = await connectOnBehalf({
    clientId: 'obo-leaf',
    chain: 'obo-leaf;obo-edge',
    token: edgeHubToken('obo-edge', edgeKey),
  });
  try {
    await c.publish(
      'devices/obo-leaf/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&%24.ce=utf-8&kind=reading',
      '{"t":21}',
    );
    await c.publish('devices/obo-leaf/messages/events/', 'second');
    const events = await waitForEvents(svc, { device: 'obo-leaf' }, 2);
    assert.deepEqual(
      events.map((e) => Buffer.from(e.body, 'base64').toString()),
      ['{"t":21}', 'second'],
    );
    assert.equal(events[0]!.annotations['iothub-connection-device-id'], 'obo-leaf');
    assert.equal(events[0]!.systemProperties['message-id'], 'm-1');
    assert.equal(events[0]!.systemProperties['content-type'], 'application/json');
    assert.equal(events[0]!.properties.kind, 'reading');
    assert.equal((await svc.getDevice('obo-leaf')).connectionState, 'Connected');
  } finally {
    c.end();
  }
});

test("a module of a child, with the $edgeHub module's own key, over MQTT over WebSockets", async () => {
  const edgeHub = await svc.getModule('obo-edge', '$edgeHub');
  const moduleKey = edgeHub.authentication?.symmetricKey?.primaryKey;
  assert.ok(moduleKey, 'the $edgeHub module has a key');
  const c = await connectOnBehalf({
    clientId: 'obo-leaf/sensor',
    chain: 'obo-leaf/sensor;obo-leaf;obo-edge',
    token: edgeHubToken('obo-edge', moduleKey),
    transport: 'wss',
  });
  try {
    await c.publish('devices/obo-leaf/modules/sensor/messages/events/', 'from the module');
    const [e] = await waitForEvents(svc, { device: 'obo-leaf', module: 'sensor' }, 1);
    assert.equal(e!.annotations['iothub-connection-module-id'], 'sensor');
  } finally {
    c.end();
  }
});

test("a device outside the edge device's scope is refused as not authorized, with the reason in the log", async () => {
  const code = await refusal(
    connectOnBehalf({
      clientId: 'obo-stranger',
      chain: 'obo-stranger;obo-edge',
      token: edgeHubToken('obo-edge', edgeKey),
    }),
  );
  assert.equal(code, 5);
  await eventually('the refusal in the hub log', () =>
    /on-behalf-of by obo-edge\/\$edgeHub refused: device obo-stranger is not in this gateway's scope/.test(
      hub.output(),
    ),
  );
});

test('a bad actor token, a missing chain and a chain that does not fit are refused', async () => {
  assert.equal(
    await refusal(
      connectOnBehalf({
        clientId: 'obo-leaf-2',
        chain: 'obo-leaf-2;obo-edge',
        token: edgeHubToken('obo-edge', newKey()),
      }),
    ),
    5,
  );
  await eventually('the bad token in the hub log', () =>
    /on-behalf-of by obo-edge\/\$edgeHub refused: .*signature does not match/.test(hub.output()),
  );
  assert.equal(await refusal(connectOnBehalf({ clientId: 'obo-leaf-2', token: edgeHubToken('obo-edge', edgeKey) })), 5);
  await eventually('the missing chain in the hub log', () =>
    /the user name carries no auth-chain parameter/.test(hub.output()),
  );
  assert.equal(
    await refusal(
      connectOnBehalf({
        clientId: 'obo-leaf-2',
        chain: 'obo-leaf-3;obo-edge',
        token: edgeHubToken('obo-edge', edgeKey),
      }),
    ),
    5,
  );
  // The log is JSON: the quotes around the chain come escaped.
  await eventually('the wrong chain in the hub log', () =>
    /the auth chain \\"obo-leaf-3;obo-edge\\" does not fit device obo-leaf-2/.test(hub.output()),
  );
  // Another edge device cannot act for a child that is not its own, even naming itself correctly.
  assert.equal(
    await refusal(
      connectOnBehalf({
        clientId: 'obo-leaf-2',
        chain: 'obo-leaf-2;obo-other-edge',
        token: edgeHubToken('obo-other-edge', otherEdgeKey),
      }),
    ),
    5,
  );
});

test('disabling the edge device drops the live connection it made for its child, and it cannot come back', async () => {
  const c = await connectOnBehalf({
    clientId: 'obo-leaf-3',
    chain: 'obo-leaf-3;obo-edge',
    token: edgeHubToken('obo-edge', edgeKey),
  });
  await c.publish('devices/obo-leaf-3/messages/events/', 'before');
  const edge = await svc.getDevice('obo-edge');
  await svc.updateDevice({ ...edge, status: 'disabled' });
  try {
    const dropped = await Promise.race([
      c.closed.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), 5000)),
    ]);
    assert.ok(dropped, 'the hub closed the connection');
    await eventually('the withdrawal in the hub log', () =>
      /on-behalf-of withdrawn: edge device obo-edge on the auth chain obo-leaf-3;obo-edge is disabled/.test(
        hub.output(),
      ),
    );
    assert.equal(
      await refusal(
        connectOnBehalf({
          clientId: 'obo-leaf-3',
          chain: 'obo-leaf-3;obo-edge',
          token: edgeHubToken('obo-edge', edgeKey),
        }),
      ),
      5,
    );
  } finally {
    c.end();
    await svc.updateDevice({ ...(await svc.getDevice('obo-edge')), status: 'enabled' });
  }
});
