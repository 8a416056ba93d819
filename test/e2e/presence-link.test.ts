/**
 * The presence link (protocols/amqp/presence-link.ts, upstream/amqp-presence.ts): a gateway tells
 * its Strata parent which identities below it are connected, and the parent shows them
 * Connected without a link per identity. Against a real hub process: first the parent's rules
 * with a raw AMQP client, then a gateway's own upstream link, across a restart of the hub.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Connection, Sender } from 'rhea';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { PRESENCE_AUTH_CHAIN, PRESENCE_IDENTITY, PRESENCE_STATE } from '../../src/protocols/amqp/presence-link.ts';
import { AmqpParentLink } from '../../src/upstream/index.ts';
import { openSender, putToken, rheaConnect, sendAndSettle } from '../fixtures/amqp-helpers.ts';
import { deviceToken, newKey, serviceClient } from '../fixtures/service-messaging-helpers.ts';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';

let hub: HubProcess;
let hubDir: string;
let svc: ServiceClient;
const edgeKey = newKey();
const cleanups: Array<() => unknown> = [];

const sasAuth = () => ({ type: 'sas', symmetricKey: { primaryKey: newKey(), secondaryKey: newKey() } });

async function startHub(address?: string): Promise<HubProcess> {
  // Debug lines name every link the hub attaches: how the test sees which links a gateway used.
  return startHubProcess({ ...(address ? { address } : {}), dataDir: hubDir, env: { STRATA_LOG_LEVEL: 'debug' } });
}

before(async () => {
  hubDir = await mkdtemp(join(tmpdir(), 'strata-presence-'));
  hub = await startHub();
  svc = serviceClient(hub);
  const edge = await svc.createDevice({
    deviceId: 'edge-p',
    capabilities: { iotEdge: true },
    authentication: { type: 'sas', symmetricKey: { primaryKey: edgeKey, secondaryKey: newKey() } },
  } as never);
  const other = await svc.createDevice({
    deviceId: 'edge-q',
    capabilities: { iotEdge: true },
    authentication: sasAuth(),
  } as never);
  for (const id of ['leaf-p1', 'leaf-p2', 'leaf-p3'])
    await svc.createDevice({ deviceId: id, deviceScope: edge.deviceScope, authentication: sasAuth() } as never);
  await svc.createModule({ deviceId: 'leaf-p3', moduleId: 'sensor', authentication: sasAuth() } as never);
  await svc.createDevice({ deviceId: 'leaf-out', deviceScope: other.deviceScope, authentication: sasAuth() } as never);
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  svc?.close();
  await hub?.stop();
  await rm(hubDir, { recursive: true, force: true });
});

async function until(what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const stateOf = async (deviceId: string, moduleId?: string) =>
  moduleId === undefined
    ? (await svc.getDevice(deviceId)).connectionState
    : (await svc.getModule(deviceId, moduleId)).connectionState;

function presence(sender: Sender, state: string | undefined, key: string | undefined, chain?: string) {
  const annotations: Record<string, string> = {};
  if (state !== undefined) annotations[PRESENCE_STATE] = state;
  if (key !== undefined) annotations[PRESENCE_IDENTITY] = key;
  if (chain !== undefined) annotations[PRESENCE_AUTH_CHAIN] = chain;
  return sendAndSettle(sender, { body: null, message_annotations: annotations } as never);
}

async function edgeConnection(): Promise<Connection> {
  const conn = await rheaConnect(hub);
  cleanups.push(() => conn.close());
  const own = await putToken(
    conn,
    deviceToken(hub, edgeKey, 'edge-p', '$edgeHub'),
    `${hub.hostname}/devices/edge-p/modules/$edgeHub`,
  );
  assert.equal(own.status, 200, own.description);
  return conn;
}

test('the hub shows an identity Connected while a presence transfer holds it, and refuses what does not fit', async () => {
  const conn = await edgeConnection();
  const link = await openSender(conn, '/devices/edge-p/modules/$edgeHub/presence');

  const unreadable = await presence(link, 'here', 'leaf-p1');
  assert.equal(unreadable.condition, 'amqp:decode-error');
  assert.match(unreadable.description ?? '', /x-opt-strata-presence as "present" or "absent"/);
  const noIdentity = await presence(link, 'present', undefined);
  assert.equal(noIdentity.condition, 'amqp:decode-error');
  assert.match(noIdentity.description ?? '', /names its identity/);

  // No put-token on behalf of leaf-p1 yet.
  const unasked = await presence(link, 'present', 'leaf-p1', 'leaf-p1;edge-p');
  assert.equal(unasked.condition, 'amqp:unauthorized-access');
  assert.match(
    unasked.description ?? '',
    /not authorized to act for device leaf-p1.*put a token for it on \$cbs first/,
  );
  assert.equal(await stateOf('leaf-p1'), 'Disconnected');

  const edgeToken = deviceToken(hub, edgeKey, 'edge-p', '$edgeHub');
  assert.equal((await putToken(conn, edgeToken, `${hub.hostname}/devices/leaf-p1`)).status, 200);
  const wrongChain = await presence(link, 'present', 'leaf-p1', 'leaf-p2;edge-p');
  assert.equal(wrongChain.condition, 'amqp:unauthorized-access');
  assert.match(wrongChain.description ?? '', /auth chain "leaf-p2;edge-p" does not fit device leaf-p1/);
  const noChain = await presence(link, 'present', 'leaf-p1');
  assert.equal(noChain.condition, 'amqp:unauthorized-access');
  assert.match(noChain.description ?? '', /names no x-opt-strata-auth-chain/);

  assert.equal((await presence(link, 'present', 'leaf-p1', 'leaf-p1;edge-p')).outcome, 'accepted');
  assert.equal(await stateOf('leaf-p1'), 'Connected', 'Connected once the transfer is accepted');
  // Said twice, held once: one absent lets go.
  assert.equal((await presence(link, 'present', 'leaf-p1', 'leaf-p1;edge-p')).outcome, 'accepted');
  assert.equal((await presence(link, 'absent', 'leaf-p1')).outcome, 'accepted');
  assert.equal(await stateOf('leaf-p1'), 'Disconnected');
  // Absent for someone never present is no error.
  assert.equal((await presence(link, 'absent', 'leaf-p2')).outcome, 'accepted');

  // Outside the gateway's scope: the put-token is refused, and so is the presence, with the reason.
  assert.notEqual((await putToken(conn, edgeToken, `${hub.hostname}/devices/leaf-out`)).status, 200);
  const outside = await presence(link, 'present', 'leaf-out', 'leaf-out;edge-p');
  assert.equal(outside.condition, 'amqp:unauthorized-access');
  assert.match(outside.description ?? '', /leaf-out is not in this gateway's scope/);
  assert.equal(await stateOf('leaf-out'), 'Disconnected');

  // A module, and the link's detach letting go of everyone it held.
  assert.equal((await putToken(conn, edgeToken, `${hub.hostname}/devices/leaf-p3/modules/sensor`)).status, 200);
  assert.equal((await putToken(conn, edgeToken, `${hub.hostname}/devices/leaf-p1`)).status, 200);
  assert.equal(
    (await presence(link, 'present', 'leaf-p3/sensor', 'leaf-p3/sensor;leaf-p3;edge-p')).outcome,
    'accepted',
  );
  assert.equal((await presence(link, 'present', 'leaf-p1', 'leaf-p1;edge-p')).outcome, 'accepted');
  assert.equal(await stateOf('leaf-p3', 'sensor'), 'Connected');
  link.close();
  await until('the detach to disconnect both', async () => (await stateOf('leaf-p1')) === 'Disconnected');
  assert.equal(await stateOf('leaf-p3', 'sensor'), 'Disconnected');

  // And the connection's end does the same.
  const again = await openSender(conn, '/devices/edge-p/modules/$edgeHub/presence');
  assert.equal((await presence(again, 'present', 'leaf-p1', 'leaf-p1;edge-p')).outcome, 'accepted');
  assert.equal(await stateOf('leaf-p1'), 'Connected');
  conn.close();
  await until('the connection end to disconnect it', async () => (await stateOf('leaf-p1')) === 'Disconnected');
});

test('the presence link needs the gateway credential on the connection', async () => {
  const conn = await rheaConnect(hub);
  cleanups.push(() => conn.close());
  const leafToken = deviceToken(hub, edgeKey, 'edge-p', '$edgeHub');
  // A credential of some other identity does not open edge-p's presence link.
  await putToken(conn, leafToken, `${hub.hostname}/devices/edge-p/modules/$edgeHub`).then((r) =>
    assert.equal(r.status, 200),
  );
  await assert.rejects(
    openSender(conn, '/devices/edge-q/modules/$edgeHub/presence'),
    (err: Error & { condition?: string }) => {
      assert.equal(err.condition, 'amqp:unauthorized-access');
      assert.match(err.message, /presence link of edge-q needs its \$edgeHub credential/);
      return true;
    },
  );
});

test("a gateway's link shows its leaves Connected without a link each, and again after the hub restarts", async () => {
  const link = new AmqpParentLink({
    parentHost: hub.hostname,
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'edge-p',
    edgeKey,
  });
  cleanups.push(() => link.close());
  const up = new Promise<void>((resolve) => link.once('up', () => resolve()));
  await link.start();
  await up;

  link.identityPresent({ deviceId: 'leaf-p2' }, true);
  link.identityPresent({ deviceId: 'leaf-p3', moduleId: 'sensor' }, true);
  // Outside the scope: refused at the hub, logged at the gateway, and the others are not held up.
  link.identityPresent({ deviceId: 'leaf-out' }, true);
  await until('leaf-p2 Connected', async () => (await stateOf('leaf-p2')) === 'Connected');
  await until('the module Connected', async () => (await stateOf('leaf-p3', 'sensor')) === 'Connected');
  assert.equal(await stateOf('leaf-out'), 'Disconnected');
  // The hub attached the gateway's presence link and no telemetry link of either identity.
  const log = hub.output();
  assert.match(log, /"route":"presence"/);
  assert.doesNotMatch(log, /devices\/leaf-p2\/messages\/events/);
  assert.doesNotMatch(log, /devices\/leaf-p3\/modules\/sensor\/messages\/events/);

  link.identityPresent({ deviceId: 'leaf-p3', moduleId: 'sensor' }, false);
  await until('the module Disconnected', async () => (await stateOf('leaf-p3', 'sensor')) === 'Disconnected');
  assert.equal(await stateOf('leaf-p2'), 'Connected', 'leaf-p2 is still below');

  // A leaf that is back within a moment (a reconnect, a new session replacing its old one) does not flap at the hub.
  const disconnects = () =>
    hub
      .output()
      .split('\n')
      .filter((l) => /"identity":"device leaf-p2".*"msg":"disconnected"/.test(l)).length;
  const before = disconnects();
  link.identityPresent({ deviceId: 'leaf-p2' }, false);
  await new Promise((r) => setTimeout(r, 200));
  link.identityPresent({ deviceId: 'leaf-p2' }, true);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(disconnects(), before, 'no session of leaf-p2 ended at the hub');
  assert.equal(await stateOf('leaf-p2'), 'Connected');

  // The hub goes away and comes back: the link reconnects and tells it again who is below.
  svc.close();
  await hub.kill9();
  hub = await startHub(hub.address);
  svc = serviceClient(hub);
  await until(
    'leaf-p2 Connected again after the restart',
    async () => (await stateOf('leaf-p2')) === 'Connected',
    30_000,
  );
  assert.equal(await stateOf('leaf-p3', 'sensor'), 'Disconnected', 'the module left before the restart');
});
