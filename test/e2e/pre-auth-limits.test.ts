/**
 * Clients that never authenticate: every port closes them when a deadline before authentication
 * passes (TLS handshake, MQTT CONNECT, AMQP header/SASL/CBS, HTTP request head), caps bound how
 * many such sockets the hub holds while it keeps serving a real device, and a client-id flood
 * cannot flood the log.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { after, before, test } from 'node:test';
import mqttPacket from 'mqtt-packet';
import deviceSdk from 'azure-iot-device';
import mqttSdk from 'azure-iot-device-mqtt';
import { randomInt } from 'node:crypto';
import { WebSocket } from 'ws';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { setupEdge, startGatewayProcess } from '../helpers/edge.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { createSasDevice, serviceClient, serviceToken, waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import { rheaConnect } from '../fixtures/amqp-helpers.ts';

const { Client, Message } = deviceSdk;
const { Mqtt } = mqttSdk;

const MQTT = 8883;
const AMQP = 5671;
const HTTPS = 443;

/** Short deadlines so that the tests are quick; the defaults are tens of seconds. */
const SHORT = [
  '--tls-handshake-timeout',
  '1',
  '--mqtt-connect-timeout',
  '1',
  '--amqp-auth-timeout',
  '1.5',
  '--http-headers-timeout',
  '1',
];
/** Every deadline here is at most 1.5 s: a socket still open after this long was not closed by one. */
const CLOSED_WITHIN_MS = 6000;

let hub: HubProcess;
let hubBytes = 0;

before(async () => {
  hub = await startHubProcess({ args: SHORT });
  const count = (c: Buffer) => (hubBytes += c.length);
  hub.proc.stdout!.on('data', count);
  hub.proc.stderr!.on('data', count);
});
after(async () => {
  await hub?.stop();
});

/** The hub's log reaches us through a pipe, a moment after the socket it speaks of closed. */
async function logShows(re: RegExp, of: () => string = () => hub.output()): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!re.test(of()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.match(of(), re);
}

/** Resolves with the ms until the server closed `socket`, or rejects after `ms`. */
function closedWithin(socket: Socket, ms: number, what: string): Promise<number> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    if (socket.destroyed && socket.closed) return resolve(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`${what}: still open after ${ms} ms`));
    }, ms);
    socket.on('error', () => undefined);
    // Read whatever comes, or the server's close would wait behind unread bytes.
    socket.resume();
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - start);
    });
  });
}

/** A source address of its own per test: refusals are logged a few lines per address and interval. */
const source = (): string => `127.${randomInt(2, 251)}.${randomInt(2, 251)}.${randomInt(2, 251)}`;

function tcp(port: number, localAddress?: string, host = hub.address): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ host, port, ...(localAddress ? { localAddress } : {}) });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

function tls(port: number, localAddress?: string, host = hub.address): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({
      host,
      port,
      ca: hub.caPem,
      servername: undefined,
      ALPNProtocols: port === AMQP ? ['amqp'] : undefined,
      ...(localAddress ? { localAddress } : {}),
    });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
}

/** The first bytes of a TLS 1.2 ClientHello record: a handshake that stops half-way. */
const PARTIAL_CLIENT_HELLO = Buffer.from([
  0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03, 0x11, 0x22, 0x33,
]);

test('half-open TLS (nothing sent, or a partial ClientHello) is closed within the handshake timeout on every port', async () => {
  const waits: Array<Promise<number>> = [];
  for (const port of [MQTT, AMQP, HTTPS]) {
    waits.push(closedWithin(await tcp(port, source()), CLOSED_WITHIN_MS, `TCP connect to ${port}, nothing sent`));
    const partial = await tcp(port, source());
    partial.write(PARTIAL_CLIENT_HELLO);
    waits.push(closedWithin(partial, CLOSED_WITHIN_MS, `partial ClientHello to ${port}`));
  }
  for (const ms of await Promise.all(waits))
    assert.ok(ms >= 500, `closed after ${ms} ms: by the deadline, not at once`);
  await logShows(/TLS handshake not done within 1 s/);
});

test('MQTT over TLS without CONNECT is closed within the CONNECT timeout', async () => {
  const s = await tls(MQTT, source());
  await closedWithin(s, CLOSED_WITHIN_MS, 'MQTT without CONNECT');
  await logShows(/no CONNECT within 1 s/);
});

test('idle AMQP is closed within the authentication timeout: no header, SASL header only, anonymous with no CBS token', async () => {
  const none = await tls(AMQP, source());
  const saslOnly = await tls(AMQP, source());
  saslOnly.write(Buffer.from([0x41, 0x4d, 0x51, 0x50, 3, 1, 0, 0]));
  const waits = [
    closedWithin(none, CLOSED_WITHIN_MS, 'AMQP, no header'),
    closedWithin(saslOnly, CLOSED_WITHIN_MS, 'AMQP, SASL header only'),
  ];
  // A real AMQP client: SASL ANONYMOUS, open, a $cbs link even, but never a put-token.
  const anonymous = await rheaConnect(hub, { localAddress: source() });
  const dropped = new Promise<string>((resolve) => {
    anonymous.once('connection_close', (ctx) =>
      resolve(String((ctx.connection.error as { condition?: string } | undefined)?.condition ?? 'closed')),
    );
    anonymous.once('disconnected', () => resolve('disconnected'));
  });
  anonymous.open_sender('$cbs');
  const timer = setTimeout(() => anonymous.close(), CLOSED_WITHIN_MS);
  const how = await dropped;
  clearTimeout(timer);
  assert.notEqual(how, 'closed', 'the hub closed the anonymous connection, not the test');
  await Promise.all(waits);
  await logShows(/no credential accepted within 1\.5 s/);
});

/** Resolves with how the server ended a WebSocket that never sends a packet. */
function idleWebSocket(host: string, subprotocol: string, localAddress: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://${host}/$iothub/websocket`, subprotocol, { ca: hub.caPem, localAddress });
    const start = Date.now();
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`${subprotocol} over WebSocket: still open after ${CLOSED_WITHIN_MS} ms`));
    }, CLOSED_WITHIN_MS);
    ws.on('error', () => undefined);
    ws.on('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - start);
    });
  });
}

test('MQTT and AMQP over WebSockets that never authenticate are closed within their timeouts', async () => {
  await Promise.all([idleWebSocket(hub.address, 'mqtt', source()), idleWebSocket(hub.address, 'AMQPWSB10', source())]);
});

test('HTTPS with a partial request head is closed within the header timeout', async () => {
  const s = await tls(HTTPS, source());
  s.write(`GET /health HTTP/1.1\r\nHost: ${hub.address}\r\nX-Slow: `);
  await closedWithin(s, CLOSED_WITHIN_MS, 'HTTPS, partial headers');
  // A whole request on a fresh connection is still answered.
  const ok = await tls(HTTPS);
  const answer = new Promise<string>((resolve) => {
    let text = '';
    ok.on('data', (c: Buffer) => {
      text += c.toString();
      if (text.includes('\r\n\r\n')) resolve(text);
    });
  });
  ok.write(`GET /health HTTP/1.1\r\nHost: ${hub.address}\r\n\r\n`);
  assert.match(await answer, /^HTTP\/1\.1 200/);
  ok.destroy();
});

test('a client-id flood cannot flood the log: 200 CONNECTs with a 64 KiB client id write a few KiB, then a count', async () => {
  const before = hubBytes;
  const from = source();
  // 65,535 characters: the longest string MQTT can carry.
  const clientId = 'x'.repeat(65_535);
  for (let i = 0; i < 200; i += 20) {
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        const s = await tls(MQTT, from);
        s.on('error', () => undefined);
        s.write(
          mqttPacket.generate({
            cmd: 'connect',
            protocolId: 'MQTT',
            protocolVersion: 4,
            clean: true,
            clientId,
            keepalive: 60,
            username: clientId,
            password: Buffer.from('nope'),
          } as never),
        );
        await closedWithin(s, 5000, 'refused CONNECT');
      }),
    );
  }
  const written = hubBytes - before;
  assert.ok(written < 200 * 1024, `the hub wrote ${written} bytes of log for 200 refused CONNECTs`);
  // The rest are counted, and the count is logged once the interval ends.
  const deadline = Date.now() + 20_000;
  const summary = new RegExp(`\\d+ more from ${from.replace(/\./g, '\\.')}`);
  while (!summary.test(hub.output()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  assert.match(hub.output(), summary);
  assert.ok(
    hub.output().includes('[cut, 65535 chars]'),
    `the client id is quoted cut, with its length:\n${hub.output().slice(-3000)}`,
  );
});

/** Open file descriptors of a process (sockets included). */
function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

test('a good official-SDK client is served during a flood of 5,000 idle sockets; the hub holds at most its cap of them', async (t) => {
  // Default deadlines (the flood stays open for the whole test), small caps to see them work.
  const capped = await startHubProcess({
    args: ['--max-unauthenticated-per-address', '400', '--max-unauthenticated', '1000'],
  });
  t.after(() => capped.stop());
  const svc: ServiceClient = serviceClient(capped);
  t.after(() => svc.close());
  const { cs } = await createSasDevice(svc, capped, 'flood-survivor');
  const pid = capped.proc.pid!;
  const baseline = fdCount(pid);

  // 5,000 idle TCP connections, half to MQTT, half to AMQP: 2,000 from one address (over its
  // cap of 400), then 300 from each of ten more (over the total cap of 1,000).
  const flood: Socket[] = [];
  const hostile = source();
  const sources = Array.from({ length: 10 }, source);
  t.after(() => flood.forEach((s) => s.destroy()));
  for (let i = 0; i < 5000; i += 250) {
    const batch = await Promise.all(
      Array.from({ length: 250 }, (_, j) => {
        const n = i + j;
        const s = netConnect({
          host: capped.address,
          port: n % 2 ? AMQP : MQTT,
          localAddress: n < 2000 ? hostile : sources[n % sources.length],
        });
        s.on('error', () => undefined);
        s.resume();
        return new Promise<Socket>((resolve) => {
          s.once('connect', () => resolve(s));
          s.once('close', () => resolve(s));
        });
      }),
    );
    flood.push(...batch);
  }
  await new Promise((r) => setTimeout(r, 500));
  const held = fdCount(pid) - baseline;
  const open = flood.filter((s) => !s.destroyed).length;
  assert.ok(held <= 1000 + 20, `the hub holds ${held} more descriptors during the flood (cap 1000)`);
  assert.ok(open <= 1000 + 20, `${open} flood sockets still open (cap 1000)`);
  await logShows(
    new RegExp(`from ${hostile.replace(/\./g, '\\.')} already \\(max_unauthenticated_per_address\\)`),
    () => capped.output(),
  );
  await logShows(/in total \(max_unauthenticated\)/, () => capped.output());

  // The official SDK (MQTT over TLS) connects from 127.0.0.1 and gets a message through.
  const client = Client.fromConnectionString(cs, Mqtt);
  t.after(() => client.close().catch(() => undefined));
  await client.setOptions({ ca: capped.caPem });
  await client.open();
  await client.sendEvent(new Message('served during the flood'));
  const events = await waitForEvents(svc, { device: 'flood-survivor' }, 1);
  assert.equal(Buffer.from(events[0]!.body, 'base64').toString(), 'served during the flood');

  // Once the flood goes, so do its descriptors.
  for (const s of flood) s.destroy();
  const deadline = Date.now() + 10_000;
  while (fdCount(pid) > baseline + 10 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.ok(fdCount(pid) <= baseline + 10, `descriptors after the flood: ${fdCount(pid)} (baseline ${baseline})`);
});

test('a gateway applies the same limits from [strata] in config.toml', async (t) => {
  const address = randomLoopback();
  const setup = await setupEdge(hub, {
    gatewayId: 'limits-gw',
    address,
    strata: [
      'tls_handshake_timeout_secs = 1',
      'mqtt_connect_timeout_secs = 1',
      'amqp_auth_timeout_secs = 1',
      'http_headers_timeout_secs = 1',
    ].join('\n'),
  });
  t.after(() => setup.cleanup());
  const gw = await startGatewayProcess({ configPath: setup.configPath, dataDir: setup.dataDir, address });
  t.after(() => gw.stop());
  const waits: Array<Promise<number>> = [];
  for (const port of [MQTT, AMQP, HTTPS])
    waits.push(closedWithin(await tcp(port, source(), address), CLOSED_WITHIN_MS, `gateway ${port}, nothing sent`));
  waits.push(closedWithin(await tls(MQTT, source(), address), CLOSED_WITHIN_MS, 'gateway MQTT without CONNECT'));
  const saslOnly = await tls(AMQP, source(), address);
  saslOnly.write(Buffer.from([0x41, 0x4d, 0x51, 0x50, 3, 1, 0, 0]));
  waits.push(closedWithin(saslOnly, CLOSED_WITHIN_MS, 'gateway AMQP, SASL header only'));
  const partial = await tls(HTTPS, source(), address);
  partial.write(`GET /health HTTP/1.1\r\nHost: ${address}\r\n`);
  waits.push(closedWithin(partial, CLOSED_WITHIN_MS, 'gateway HTTPS, partial headers'));
  waits.push(idleWebSocket(address, 'mqtt', source()));
  await Promise.all(waits);
});

test('a limit that is not a positive number stops the gateway with the setting named', async (t) => {
  const address = randomLoopback();
  const setup = await setupEdge(hub, {
    gatewayId: 'limits-gw-bad',
    address,
    strata: 'max_unauthenticated = -5',
    deploy: false,
  });
  t.after(() => setup.cleanup());
  await assert.rejects(
    startGatewayProcess({ configPath: setup.configPath, dataDir: setup.dataDir, address }),
    /\[strata\] max_unauthenticated must be a positive whole number, not -5/,
  );
});

test('a long-lived HTTPS answer (an SSE event stream) counts as authenticated once its head is sent: a flood does not close it', async (t) => {
  // A total cap of 20: every idle socket past it closes the oldest unauthenticated connection.
  const capped = await startHubProcess({ args: ['--max-unauthenticated', '20'] });
  t.after(() => capped.stop());
  const svc: ServiceClient = serviceClient(capped);
  t.after(() => svc.close());
  const { cs } = await createSasDevice(svc, capped, 'sse-during-flood');
  const received: string[] = [];
  const stream = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = httpsRequest(
      {
        host: capped.address,
        port: capped.httpsPort,
        path: '/events?from=end&device=sse-during-flood',
        ca: capped.caPem,
        agent: false,
        headers: { accept: 'text/event-stream', authorization: serviceToken(svc) },
      },
      resolve,
    );
    req.on('error', reject);
    req.end();
    t.after(() => req.destroy());
  });
  assert.equal(stream.statusCode, 200);
  let closed = false;
  stream.on('data', (c: Buffer) => received.push(c.toString()));
  stream.on('close', () => (closed = true));

  const flood: Socket[] = [];
  t.after(() => flood.forEach((s) => s.destroy()));
  for (let i = 0; i < 60; i++) flood.push(await tcp(MQTT, source(), capped.address));
  await logShows(/in total \(max_unauthenticated\)/, () => capped.output());
  assert.equal(closed, false, 'the event stream is still open after the flood');

  const client = Client.fromConnectionString(cs, Mqtt);
  t.after(() => client.close().catch(() => undefined));
  await client.setOptions({ ca: capped.caPem });
  await client.open();
  await client.sendEvent(new Message('seen on the stream'));
  const deadline = Date.now() + 10_000;
  while (!received.join('').includes(Buffer.from('seen on the stream').toString('base64')) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 50));
  assert.ok(
    received.join('').includes(Buffer.from('seen on the stream').toString('base64')),
    `the stream carried the event: ${received.join('').slice(0, 500)}`,
  );
});
