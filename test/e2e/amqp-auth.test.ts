import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Connection } from 'rhea';
import deviceSdk from 'azure-iot-device';
import amqpSdk from 'azure-iot-device-amqp';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import type { EventPageJson } from '../../src/hub/service-messaging.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import {
  createSasDevice,
  deviceToken,
  newKey,
  serviceClient,
  waitForEvents,
} from '../fixtures/service-messaging-helpers.ts';
import { openReceiver, openSender, putToken, rheaConnect, sendAndSettle } from '../fixtures/amqp-helpers.ts';

/**
 * How AMQP clients prove who they are: CBS put-token (the Node SDK, with no SASL layer;
 * SASL ANONYMOUS or MSSBCBS first), SASL PLAIN, X.509 client certificates; renewal on the
 * same connection, expiry enforced, many identities on one connection, and no identity
 * borrowing another's token.
 */

const { Client, Message } = deviceSdk;
const { Amqp, AmqpWs } = amqpSdk;
type DeviceClient = InstanceType<typeof Client>;

const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

let hub: HubProcess;
let svc: ServiceClient;
let tmp: string;
const clients: DeviceClient[] = [];
const conns: Connection[] = [];

before(async () => {
  // Info level: the renewal test reads the hub's own account of put-tokens.
  hub = await startHubProcess({ env: { STRATA_LOG_LEVEL: 'info' } });
  svc = serviceClient(hub);
  tmp = await mkdtemp(join(tmpdir(), 'strata-amqp-auth-'));
});

after(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  for (const c of conns) c.close();
  svc?.close();
  await hub?.stop();
  await rm(tmp, { recursive: true, force: true });
});

async function connect(opts: Record<string, unknown> = {}): Promise<Connection> {
  const c = await rheaConnect(hub, opts);
  conns.push(c);
  return c;
}

const hubName = (): string => hub.hostname.split('.')[0]!;
const policyKey = (): { name: string; key: string } => {
  const m = /SharedAccessKeyName=([^;]+);SharedAccessKey=([^;]+)/.exec(hub.connectionString)!;
  return { name: m[1]!, key: m[2]! };
};

async function eventBodies(deviceId: string): Promise<string[]> {
  const page = (
    await svc.request<EventPageJson>(
      'GET',
      `/events?${new URLSearchParams({ device: deviceId, from: '0', limit: '1000' })}`,
    )
  ).body;
  return page.events.map((e) => Buffer.from(e.body, 'base64').toString('utf8'));
}

/** Waits for the link to be detached by the hub; resolves with the error condition it gave. */
function detachedWith(
  link: { once(e: string, f: (ctx: any) => void): unknown },
  event: 'sender_close' | 'receiver_close',
): Promise<string | undefined> {
  return new Promise((resolve) =>
    link.once(event, (ctx: any) => resolve((ctx.sender ?? ctx.receiver)?.error?.condition)),
  );
}

test('the SDK renews its SAS token on the same connection and keeps sending past the first token expiry', async () => {
  const { cs } = await createSasDevice(svc, hub, 'auth-renew');
  const client = Client.fromConnectionString(cs, Amqp);
  clients.push(client);
  // Tokens valid 4 s, renewed every 2 s: at least a second to spare whatever the rounding of se.
  await client.setOptions({
    ca: hub.caPem,
    tokenRenewal: { tokenValidTimeInSeconds: 4, tokenRenewalMarginInSeconds: 2 },
  });
  const drops: unknown[] = [];
  client.on('disconnect', (e: unknown) => drops.push(e));
  await client.open();
  const start = Date.now();
  let n = 0;
  // 6 s spans the first token's expiry and at least two renewals.
  while (Date.now() - start < 6000) {
    await client.sendEvent(new Message(`n${n++}`));
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.deepEqual(drops, [], 'no disconnect: the renewed tokens kept the connection');
  const bodies = await eventBodies('auth-renew');
  assert.equal(bodies.length, n);
  const lines = hub
    .output()
    .split('\n')
    .filter((l) => l.includes('"who":"device auth-renew"'));
  const connects = lines.filter((l) => l.includes('authenticated by CBS'));
  const renewals = lines.filter((l) => l.includes('token renewed by CBS'));
  assert.equal(connects.length, 1, 'one connection, authenticated once');
  assert.ok(renewals.length >= 2, `renewed on that connection (${renewals.length} renewals)`);
  assert.equal(new Set(lines.map((l) => JSON.parse(l).conn)).size, 1, 'all on the same AMQP connection');
});

test('CBS renewal on a raw connection keeps a link alive; without it the link is detached at expiry', async () => {
  const a = await createSasDevice(svc, hub, 'auth-expiry-a');
  const b = await createSasDevice(svc, hub, 'auth-expiry-b');
  const conn = await connect();
  const cbs = { sender: await openSender(conn, '$cbs'), receiver: await openReceiver(conn, '$cbs') };
  // Both first tokens end at the same second, 2 to 3 s from now.
  const se = Math.floor(Date.now() / 1000) + 3;
  const token = (key: string, id: string, expiry: number) =>
    createSasToken(`${hub.hostname}/devices/${id}`, key, expiry);
  assert.equal(
    (await putToken(conn, token(a.key, 'auth-expiry-a', se), `${hub.hostname}/devices/auth-expiry-a`, cbs)).status,
    200,
  );
  assert.equal(
    (await putToken(conn, token(b.key, 'auth-expiry-b', se), `${hub.hostname}/devices/auth-expiry-b`, cbs)).status,
    200,
  );
  const sa = await openSender(conn, '/devices/auth-expiry-a/messages/events');
  const sb = await openSender(conn, '/devices/auth-expiry-b/messages/events');
  const bGone = detachedWith(sb, 'sender_close');
  // Only A renews, while its first token is still valid.
  assert.equal(
    (await putToken(conn, token(a.key, 'auth-expiry-a', se + 3600), `${hub.hostname}/devices/auth-expiry-a`, cbs))
      .status,
    200,
  );
  assert.ok(Date.now() < se * 1000, 'the renewal came before the first token ran out');
  assert.equal(await bGone, 'amqp:unauthorized-access', 'the link of the identity whose token expired is detached');
  assert.ok(Date.now() >= se * 1000, "A's first token has run out too");
  assert.equal(
    (await sendAndSettle(sa, { body: 'after-expiry-of-b' })).outcome,
    'accepted',
    'the renewed identity keeps sending on the same connection',
  );
  assert.deepEqual(await eventBodies('auth-expiry-a'), ['after-expiry-of-b']);
});

test('one connection authenticates 100 devices by CBS and sends for each', async () => {
  const ids = Array.from({ length: 100 }, (_, i) => `auth-many-${i}`);
  const keys = new Map<string, string>();
  for (let i = 0; i < ids.length; i += 100) {
    const chunk = ids.slice(i, i + 100).map((id) => {
      const key = newKey();
      keys.set(id, key);
      return {
        id,
        importMode: 'create',
        authentication: { type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: newKey() } },
      };
    });
    const r = await svc.request<{ isSuccessful: boolean }>('POST', '/devices', { body: chunk });
    assert.ok(r.body.isSuccessful);
  }
  const conn = await connect();
  const cbs = { sender: await openSender(conn, '$cbs'), receiver: await openReceiver(conn, '$cbs') };
  const statuses = await Promise.all(
    ids.map((id) => putToken(conn, deviceToken(hub, keys.get(id)!, id), `${hub.hostname}/devices/${id}`, cbs)),
  );
  assert.deepEqual(new Set(statuses.map((s) => s.status)), new Set([200]));
  const senders = await Promise.all(ids.map((id) => openSender(conn, `/devices/${id}/messages/events`)));
  const outcomes = await Promise.all(
    senders.map((s, i) => sendAndSettle(s, { body: `hello from ${ids[i]}`, message_id: `m-${i}` })),
  );
  assert.deepEqual(new Set(outcomes.map((o) => o.outcome)), new Set(['accepted']));
  for (const id of [ids[0]!, ids[57]!, ids[99]!]) assert.deepEqual(await eventBodies(id), [`hello from ${id}`]);
  const page = (await svc.request<EventPageJson>('GET', `/events?${new URLSearchParams({ from: '0', limit: '1000' })}`))
    .body;
  const all = page.events.filter((e) => e.deviceId.startsWith('auth-many-'));
  assert.equal(new Set(all.map((e) => e.deviceId)).size, 100, 'every device sent, stamped with its own identity');
});

test("a token for device A cannot attach device B's links; A keeps working", async () => {
  const a = await createSasDevice(svc, hub, 'auth-a');
  await createSasDevice(svc, hub, 'auth-b');
  const conn = await connect();
  const cbs = { sender: await openSender(conn, '$cbs'), receiver: await openReceiver(conn, '$cbs') };
  assert.equal(
    (await putToken(conn, deviceToken(hub, a.key, 'auth-a'), `${hub.hostname}/devices/auth-a`, cbs)).status,
    200,
  );
  // A's key signing a token whose audience names B fails the signature check at put-token.
  const forged = createSasToken(`${hub.hostname}/devices/auth-b`, a.key, Math.floor(Date.now() / 1000) + 600);
  const r = await putToken(conn, forged, `${hub.hostname}/devices/auth-b`, cbs);
  assert.equal(r.status, 401);
  assert.match(r.description, /signature/);
  // Attaching B's telemetry link with only A's token is refused.
  await assert.rejects(openSender(conn, '/devices/auth-b/messages/events'), (err: Error & { condition?: string }) => {
    assert.equal(err.condition, 'amqp:unauthorized-access');
    assert.match(err.message, /auth-b/);
    return true;
  });
  await assert.rejects(openReceiver(conn, '/devices/auth-b/messages/devicebound'), {
    condition: 'amqp:unauthorized-access',
  });
  const sa = await openSender(conn, '/devices/auth-a/messages/events');
  assert.equal((await sendAndSettle(sa, { body: 'a-still-works' })).outcome, 'accepted');
  assert.deepEqual(await eventBodies('auth-b'), []);
});

test('SASL ANONYMOUS and SASL MSSBCBS followed by CBS, and SASL PLAIN with a device or a policy token', async () => {
  const d = await createSasDevice(svc, hub, 'auth-sasl');
  const audience = `${hub.hostname}/devices/auth-sasl`;

  const anon = await connect({
    sasl_mechanisms: {
      ANONYMOUS: () => ({ start: (cb: (e: unknown, r: Buffer) => void) => cb(undefined, Buffer.from('')) }),
    },
  });
  assert.equal((await putToken(anon, deviceToken(hub, d.key, 'auth-sasl'), audience)).status, 200);
  assert.equal(
    (await sendAndSettle(await openSender(anon, '/devices/auth-sasl/messages/events'), { body: 'anonymous' })).outcome,
    'accepted',
  );

  const cbsMech = await connect({
    sasl_mechanisms: {
      MSSBCBS: () => ({ start: (cb: (e: unknown, r: Buffer) => void) => cb(undefined, Buffer.alloc(0)) }),
    },
  });
  assert.equal((await putToken(cbsMech, deviceToken(hub, d.key, 'auth-sasl'), audience)).status, 200);
  assert.equal(
    (await sendAndSettle(await openSender(cbsMech, '/devices/auth-sasl/messages/events'), { body: 'mssbcbs' })).outcome,
    'accepted',
  );

  const plain = await connect({
    username: `auth-sasl@sas.${hubName()}`,
    password: deviceToken(hub, d.key, 'auth-sasl'),
  });
  assert.equal(
    (await sendAndSettle(await openSender(plain, '/devices/auth-sasl/messages/events'), { body: 'plain' })).outcome,
    'accepted',
  );
  assert.deepEqual(await eventBodies('auth-sasl'), ['anonymous', 'mssbcbs', 'plain']);

  const { name, key } = policyKey();
  const policyToken = createSasToken(hub.hostname, key, Math.floor(Date.now() / 1000) + 600, name);
  const service = await connect({ username: `${name}@sas.root.${hubName()}`, password: policyToken });
  const c2d = await openSender(service, '/messages/devicebound');
  const sent = await sendAndSettle(c2d, {
    to: '/devices/auth-sasl/messages/devicebound',
    body: 'c2d over plain',
    message_id: 'plain-c2d',
  });
  assert.equal(sent.outcome, 'accepted');

  await assert.rejects(
    connect({ username: `auth-sasl@sas.${hubName()}`, password: deviceToken(hub, newKey(), 'auth-sasl') }),
    (err: unknown) => {
      assert.match(String((err as { condition?: string }).condition ?? err), /unauthorized/);
      return true;
    },
  );
});

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

test('X.509: a self-signed device over Amqp and a CA-signed device over AmqpWs, identity taken from the link', async () => {
  // Self-signed, registered by thumbprint.
  const ssKey = join(tmp, 'ss.key');
  const ssCert = join(tmp, 'ss.pem');
  openssl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    ssKey,
    '-out',
    ssCert,
    '-subj',
    '/CN=auth-x509-ss',
    '-days',
    '2',
  ]);
  const fp = execFileSync('openssl', ['x509', '-in', ssCert, '-noout', '-fingerprint', '-sha256'], { encoding: 'utf8' })
    .split('=')[1]!
    .trim()
    .replace(/:/g, '');
  await svc.createDevice({
    deviceId: 'auth-x509-ss',
    authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: fp, secondaryThumbprint: null } },
  });

  // CA-signed: a CA registered with the hub, a device certificate with CN = device id.
  const caKey = join(tmp, 'ca.key');
  const caCert = join(tmp, 'ca.pem');
  await writeFile(join(tmp, 'ca.ext'), 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n');
  openssl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    caKey,
    '-out',
    caCert,
    '-subj',
    '/CN=amqp test device CA',
    '-days',
    '2',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const devKey = join(tmp, 'dev.key');
  const devCsr = join(tmp, 'dev.csr');
  const devCert = join(tmp, 'dev.pem');
  openssl([
    'req',
    '-new',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    devKey,
    '-out',
    devCsr,
    '-subj',
    '/CN=auth-x509-ca',
  ]);
  openssl([
    'x509',
    '-req',
    '-in',
    devCsr,
    '-CA',
    caCert,
    '-CAkey',
    caKey,
    '-CAcreateserial',
    '-out',
    devCert,
    '-days',
    '2',
  ]);
  execFileSync(process.execPath, [STRATA, 'hub', 'ca', 'add', caCert, '--data', hub.dataDir], { stdio: 'pipe' });
  await svc.createDevice({ deviceId: 'auth-x509-ca', authentication: { type: 'certificateAuthority' } });

  const run = async (
    id: string,
    certPath: string,
    keyPath: string,
    transport: typeof Amqp | typeof AmqpWs,
  ): Promise<DeviceClient> => {
    const client = Client.fromConnectionString(`HostName=${hub.hostname};DeviceId=${id};x509=true`, transport);
    clients.push(client);
    const [cert, key] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')]);
    await client.setOptions({ ca: hub.caPem, cert, key });
    await client.open();
    await client.sendEvent(new Message(`x509 ${id}`));
    return client;
  };
  await run('auth-x509-ss', ssCert, ssKey, Amqp);
  await run('auth-x509-ca', devCert, devKey, AmqpWs);
  const [ss] = await waitForEvents(svc, { device: 'auth-x509-ss' }, 1);
  const [ca] = await waitForEvents(svc, { device: 'auth-x509-ca' }, 1);
  assert.match(String(ss!.annotations['iothub-connection-auth-method']), /x509Certificate/);
  assert.match(String(ca!.annotations['iothub-connection-auth-method']), /x509Certificate/);

  // The self-signed certificate proves its own device only.
  const [cert, key] = await Promise.all([readFile(ssCert, 'utf8'), readFile(ssKey, 'utf8')]);
  const conn = await connect({ cert, key });
  await assert.rejects(openSender(conn, '/devices/auth-x509-ca/messages/events'), {
    condition: 'amqp:unauthorized-access',
  });
  const own = await openSender(conn, '/devices/auth-x509-ss/messages/events');
  assert.equal((await sendAndSettle(own, { body: 'raw x509' })).outcome, 'accepted');
});

test('a device SDK with a wrong key sees UnauthorizedError', async () => {
  await createSasDevice(svc, hub, 'auth-wrong');
  const client = Client.fromConnectionString(
    `HostName=${hub.hostname};DeviceId=auth-wrong;SharedAccessKey=${newKey()}`,
    Amqp,
  );
  clients.push(client);
  await client.setOptions({ ca: hub.caPem });
  await assert.rejects(client.open(), (err: Error) => {
    assert.equal(err.name, 'UnauthorizedError');
    return true;
  });
});
