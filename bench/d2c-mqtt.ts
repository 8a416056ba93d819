/**
 * D2C throughput into the hub over MQTT/TLS: N devices publish QoS 1 telemetry of a fixed size,
 * each keeping a window of unacknowledged PUBLISHes; a PUBACK means the message is durably in
 * the hub's event stream, so latency is publish -> PUBACK.
 *
 *   node --import tsx bench/d2c-mqtt.ts [--devices 100] [--messages 2000] [--size 256] [--window 10] [--hub-data DIR]
 *
 * The hub runs as a real `strata hub start` child process on its own loopback address; the
 * devices are created through the service REST API (bulk import). Prints one JSON line.
 */
import { randomBytes } from 'node:crypto';
import { request } from 'node:https';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import mqttPacket from 'mqtt-packet';
import { parseConnectionString } from '../src/identity/connection-string.ts';
import { createSasToken } from '../src/identity/sas.ts';
import { hubConnectionString, readHubState } from '../src/hub/local.ts';
import { readFileSync } from 'node:fs';
import { startHubProcess } from '../test/helpers/hub.ts';

const { values: args } = parseArgs({
  options: {
    devices: { type: 'string', default: '100' },
    messages: { type: 'string', default: '2000' },
    size: { type: 'string', default: '256' },
    window: { type: 'string', default: '10' },
    /** Use a hub already running from this data directory (e.g. one started with --cpu-prof). */
    'hub-data': { type: 'string' },
  },
});
const DEVICES = Number(args.devices);
const PER_DEVICE = Number(args.messages);
const SIZE = Number(args.size);
const WINDOW = Number(args.window);

function rest(
  host: string,
  ca: string,
  token: string,
  method: string,
  path: string,
  body: unknown,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = request(
      {
        host,
        port: 443,
        method,
        path: `${path}?api-version=2021-04-12`,
        ca,
        headers: { authorization: token, 'content-type': 'application/json', 'content-length': data.length },
      },
      (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

interface Device {
  id: string;
  key: string;
}

/** A minimal MQTT publisher: CONNECT, then PUBLISH QoS 1 with a sliding window. */
class Publisher {
  private socket!: TLSSocket;
  private readonly parser = mqttPacket.parser({ protocolVersion: 4 });
  private readonly sentAt = new Map<number, number>();
  private sent = 0;
  private nextId = 1;
  acked = 0;
  private done!: () => void;
  private fail!: (e: Error) => void;
  readonly finished: Promise<void>;

  constructor(
    private readonly dev: Device,
    private readonly host: string,
    private readonly port: number,
    private readonly ca: string,
    private readonly latencies: Float64Array,
    private readonly latencyBase: number,
  ) {
    this.finished = new Promise((res, rej) => {
      this.done = res;
      this.fail = rej;
    });
  }

  async connect(): Promise<void> {
    this.socket = tlsConnect({ host: this.host, port: this.port, ca: this.ca });
    this.socket.setNoDelay(true);
    await new Promise<void>((res, rej) => {
      this.socket.once('secureConnect', res);
      this.socket.once('error', rej);
    });
    this.socket.on('error', (e) => this.fail(e));
    this.socket.on('close', () => {
      if (this.acked < PER_DEVICE) this.fail(new Error(`${this.dev.id}: connection closed after ${this.acked} acks`));
    });
    const connack = new Promise<void>((res, rej) => {
      this.parser.once('packet', (p: any) =>
        p.cmd === 'connack' && p.returnCode === 0 ? res() : rej(new Error(`${this.dev.id}: CONNACK ${p.returnCode}`)),
      );
    });
    this.socket.on('data', (d) => this.parser.parse(d));
    const token = createSasToken(
      `${this.host}/devices/${this.dev.id}`,
      this.dev.key,
      Math.floor(Date.now() / 1000) + 3600,
    );
    this.socket.write(
      mqttPacket.generate({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clean: false,
        clientId: this.dev.id,
        keepalive: 180,
        username: `${this.host}/${this.dev.id}/?api-version=2021-04-12`,
        password: Buffer.from(token),
      }),
    );
    await connack;
    this.parser.on('packet', (p: any) => {
      if (p.cmd !== 'puback') return;
      const t0 = this.sentAt.get(p.messageId);
      if (t0 === undefined) return;
      this.sentAt.delete(p.messageId);
      this.latencies[this.latencyBase + this.acked] = performance.now() - t0;
      this.acked++;
      if (this.acked === PER_DEVICE) {
        this.done();
        return;
      }
      this.pump();
    });
  }

  start(): void {
    this.pump();
  }

  private pump(): void {
    this.socket.cork();
    while (this.sent < PER_DEVICE && this.sentAt.size < WINDOW) {
      const id = this.nextId;
      this.nextId = id === 65535 ? 1 : id + 1;
      const payload = Buffer.alloc(SIZE, 0x20);
      const now = performance.now();
      payload.write(JSON.stringify({ d: this.dev.id, n: this.sent, t: Date.now() }));
      this.sentAt.set(id, now);
      this.socket.write(
        mqttPacket.generate({
          cmd: 'publish',
          topic: `devices/${this.dev.id}/messages/events/`,
          payload,
          qos: 1,
          dup: false,
          retain: false,
          messageId: id,
        }),
      );
      this.sent++;
    }
    process.nextTick(() => this.socket.uncork());
  }

  close(): void {
    this.socket.end(mqttPacket.generate({ cmd: 'disconnect' }));
  }
}

/** A hub started by someone else: its address, CA and connection string come from its data directory. */
function runningHub(dataDir: string): {
  address: string;
  hostname: string;
  dataDir: string;
  caPem: string;
  connectionString: string;
  stop(): Promise<void>;
} {
  const state = readHubState(dataDir);
  if (!state) throw new Error(`no running hub in ${dataDir}`);
  return {
    address: state.bind,
    hostname: state.hostname,
    dataDir,
    caPem: readFileSync(state.caPath, 'utf8'),
    connectionString: hubConnectionString(dataDir),
    stop: async () => undefined,
  };
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main(): Promise<void> {
  const hub = args['hub-data'] ? runningHub(args['hub-data']) : await startHubProcess({});
  try {
    const cs = parseConnectionString(hub.connectionString);
    const policyToken = createSasToken(
      hub.hostname,
      cs.SharedAccessKey,
      Math.floor(Date.now() / 1000) + 3600,
      cs.SharedAccessKeyName,
    );
    const runId = randomBytes(3).toString('hex');
    const devices: Device[] = Array.from({ length: DEVICES }, (_, i) => ({
      id: `bench-${runId}-${i}`,
      key: randomBytes(32).toString('base64'),
    }));
    for (let i = 0; i < devices.length; i += 100) {
      const chunk = devices.slice(i, i + 100).map((d) => ({
        id: d.id,
        importMode: 'create',
        status: 'enabled',
        authentication: {
          type: 'sas',
          symmetricKey: { primaryKey: d.key, secondaryKey: randomBytes(32).toString('base64') },
        },
      }));
      const r = await rest(hub.address, hub.caPem, policyToken, 'POST', '/devices', chunk);
      if (r.status !== 200 || !JSON.parse(r.body).isSuccessful)
        throw new Error(`bulk create failed: ${r.status} ${r.body}`);
    }
    const mqttPort = readHubState(hub.dataDir)?.ports.mqtt ?? 8883;

    const latencies = new Float64Array(DEVICES * PER_DEVICE);
    const pubs = devices.map((d, i) => new Publisher(d, hub.address, mqttPort, hub.caPem, latencies, i * PER_DEVICE));
    await Promise.all(pubs.map((p) => p.connect()));

    const t0 = performance.now();
    for (const p of pubs) p.start();
    await Promise.all(pubs.map((p) => p.finished));
    const seconds = (performance.now() - t0) / 1000;
    for (const p of pubs) p.close();

    const total = DEVICES * PER_DEVICE;
    const sorted = latencies.slice().sort();
    const db = new Database(join(hub.dataDir, 'events.db'), { readonly: true });
    const stored = (
      db.prepare('SELECT COUNT(*) AS n FROM events WHERE dev LIKE ?').get(`bench-${runId}-%`) as { n: number }
    ).n;
    db.close();
    process.stdout.write(
      `${JSON.stringify({
        bench: 'd2c-mqtt',
        devices: DEVICES,
        messages: total,
        size: SIZE,
        window: WINDOW,
        seconds: Number(seconds.toFixed(2)),
        msgsPerSecond: Math.round(total / seconds),
        latencyMs: {
          p50: Number(percentile(sorted, 50).toFixed(1)),
          p99: Number(percentile(sorted, 99).toFixed(1)),
          max: Number(sorted[sorted.length - 1].toFixed(1)),
        },
        storedInEventStream: stored,
      })}\n`,
    );
    if (stored !== total) process.exitCode = 1;
  } finally {
    await hub.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
