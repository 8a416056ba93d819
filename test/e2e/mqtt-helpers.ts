/** Shared pieces of the mqtt-*.test.ts files: an in-process hub on its own loopback address, SDK loading, raw MQTT over TLS. */
import { createRequire } from 'node:module';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import mqttPacket from 'mqtt-packet';
import { startHub, type HubNode } from '../../src/hub/hub.ts';
import type { Engine } from '../../src/engine/engine.ts';
import type { EventStreamReader, StoredEvent } from '../../src/model/events.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import { randomLoopback } from '../helpers/hub.ts';

export const require = createRequire(import.meta.url);
export const sdk = {
  device: require('azure-iot-device') as any,
  mqtt: require('azure-iot-device-mqtt') as any,
  common: require('azure-iot-common') as any,
};

export interface TestHub {
  node: HubNode;
  engine: Engine;
  events: EventStreamReader;
  address: string;
  caPem: string;
  mqttPort: number;
}

/** A hub in this process on a random loopback address (HTTPS 443 for the WebSocket transports, MQTT 8883), closed after the test. */
export async function startTestHub(
  t: { after(fn: () => unknown): void },
  opts: { mqttPort?: number } = {},
): Promise<TestHub> {
  const address = randomLoopback();
  const dataDir = await mkdtemp(join(tmpdir(), 'strata-mqtt-'));
  const node = await startHub({
    dataDir,
    hostname: address,
    bind: address,
    httpsPort: 443,
    mqttPort: opts.mqttPort ?? 8883,
  });
  t.after(async () => {
    await node.close();
    await rm(dataDir, { recursive: true, force: true });
  });
  return { node, engine: node.engine, events: node.events, address, caPem: node.tls.caPem, mqttPort: node.ports.mqtt };
}

/** Creates a SAS device and returns its key and connection string. */
export function createSasDevice(hub: TestHub, deviceId: string): { key: string; connectionString: string } {
  const dev = hub.node.registry.createDevice({ deviceId });
  const key = dev.authentication!.symmetricKey!.primaryKey as string;
  return { key, connectionString: `HostName=${hub.address};DeviceId=${deviceId};SharedAccessKey=${key}` };
}

export function createSasModule(
  hub: TestHub,
  deviceId: string,
  moduleId: string,
): { key: string; connectionString: string } {
  const mod = hub.node.registry.putModule(deviceId, moduleId, { deviceId, moduleId });
  const key = mod.authentication!.symmetricKey!.primaryKey as string;
  return {
    key,
    connectionString: `HostName=${hub.address};DeviceId=${deviceId};ModuleId=${moduleId};SharedAccessKey=${key}`,
  };
}

export function deviceToken(hub: TestHub, deviceId: string, key: string, ttlSeconds = 3600, moduleId?: string): string {
  const aud = `${hub.address}/devices/${deviceId}${moduleId ? `/modules/${moduleId}` : ''}`;
  return createSasToken(aud, key, Math.floor(Date.now() / 1000) + ttlSeconds);
}

/**
 * Opens an official SDK client (device or module) trusting the hub CA; closed after the test.
 * `setup` runs between setOptions and open: registering C2D/method handlers connects the
 * client, so the CA must be set before.
 */
export async function openClient(
  t: { after(fn: () => unknown): void },
  client: any,
  caPem: string,
  extra: Record<string, unknown> = {},
  setup?: (client: any) => void,
): Promise<any> {
  // A client wedged in its retry loop must not hold the test run: closing gets 5 s.
  t.after(() => Promise.race([client.close().catch(() => undefined), new Promise((r) => setTimeout(r, 5000).unref())]));
  await client.setOptions({ ca: caPem, ...extra });
  setup?.(client);
  await client.open();
  return client;
}

/** The SDK's reported-properties update takes a callback only. */
export function updateReported(twin: any, patch: Record<string, unknown>): Promise<void> {
  return new Promise((resolve, reject) =>
    twin.properties.reported.update(patch, (err: Error | null) => (err ? reject(err) : resolve())),
  );
}

/** Polls until `fn` returns a truthy value. */
export async function waitFor<T>(fn: () => T | Promise<T>, what: string, timeoutMs = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The events of one device, waiting until at least `count` are there. */
export async function eventsOf(hub: TestHub, deviceId: string, count = 1, timeoutMs = 10_000): Promise<StoredEvent[]> {
  const deadline = Date.now() + timeoutMs;
  let events: StoredEvent[] = [];
  while (events.length < count) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`expected ${count} events of ${deviceId}, found ${events.length}`);
    events = (await hub.events.read({ deviceId, fromSequenceNumber: 1, limit: 1000, waitMs: Math.min(left, 500) }))
      .events;
  }
  return events;
}

export function countEvents(hub: TestHub, deviceId?: string): Promise<number> {
  return hub.events.read({ deviceId, fromSequenceNumber: 1, limit: 1000 }).then((r) => r.events.length);
}

// ---------------------------------------------------------------------------------------------
// A raw MQTT 3.1.1 client over TLS, to send what the SDKs never would
// ---------------------------------------------------------------------------------------------

export interface RawClient {
  socket: TLSSocket;
  packets: any[];
  closed: Promise<void>;
  isClosed(): boolean;
  send(packet: Record<string, unknown>): void;
  writeRaw(bytes: Buffer): void;
  next(cmd: string, timeoutMs?: number, match?: (p: any) => boolean): Promise<any>;
  end(): void;
}

interface ConnectFields {
  clientId: string;
  password?: string;
  clean?: boolean;
  keepalive?: number;
  username?: string;
}

/** A 3.1.1 CONNECT as a device SDK sends it to `hub` (user name `{host}/{clientId}/?api-version=...`). */
export function connectPacket(hub: { address: string }, o: ConnectFields): mqttPacket.IConnectPacket {
  return {
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: o.clean ?? true,
    clientId: o.clientId,
    keepalive: o.keepalive ?? 60,
    username: o.username ?? `${hub.address}/${o.clientId}/?api-version=2021-04-12`,
    ...(o.password !== undefined ? { password: Buffer.from(o.password) } : {}),
  };
}

export async function rawConnect(
  t: { after(fn: () => unknown): void },
  hub: TestHub,
  o: ConnectFields & { cert?: string; key?: string },
): Promise<RawClient & { connack: any }> {
  const c = await rawSocket(t, hub, { cert: o.cert, key: o.key });
  c.send(connectPacket(hub, o) as unknown as Record<string, unknown>);
  const connack = await c.next('connack');
  return Object.assign(c, { connack });
}

export async function rawSocket(
  t: { after(fn: () => unknown): void },
  hub: TestHub,
  o: { cert?: string; key?: string } = {},
): Promise<RawClient> {
  const socket = tlsConnect({
    host: hub.address,
    port: hub.mqttPort,
    ca: hub.caPem,
    cert: o.cert,
    key: o.key,
    servername: undefined,
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  t.after(() => socket.destroy());
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const packets: any[] = [];
  const waiters = new Set<() => void>();
  parser.on('packet', (p) => {
    packets.push(p);
    for (const w of [...waiters]) w();
  });
  socket.on('data', (d) => parser.parse(d));
  socket.on('error', () => undefined);
  let isClosed = false;
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      isClosed = true;
      for (const w of [...waiters]) w();
      resolve();
    }),
  );
  return {
    socket,
    packets,
    closed,
    isClosed: () => isClosed,
    send: (p) => socket.write(mqttPacket.generate(p as any)),
    writeRaw: (b) => socket.write(b),
    end: () => socket.end(),
    next(cmd, timeoutMs = 5000, match = () => true) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const i = packets.findIndex((p) => p.cmd === cmd && match(p));
          if (i >= 0) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(packets.splice(i, 1)[0]);
          } else if (isClosed) {
            waiters.delete(check);
            clearTimeout(timer);
            reject(new Error(`connection closed while waiting for ${cmd}`));
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no ${cmd} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

/** Resolves true when the promise settles within `ms`. */
export async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([
    p.then(() => true),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
  ]);
  clearTimeout(timer);
  return r;
}

export type { TestContext };
