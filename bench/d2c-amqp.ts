/**
 * D2C throughput into the hub over AMQP/TLS: N devices send telemetry of a fixed size, each
 * keeping a window of unsettled deliveries; the hub accepts a delivery once it is durably in
 * the event stream, so latency is transfer -> accepted disposition.
 *
 *   node --import tsx bench/d2c-amqp.ts [--devices 100] [--messages 2000] [--size 256] [--window 10] [--multiplex] [--hub-data DIR]
 *
 * Each device has its own connection (CBS put-token, then a sender link), as the device SDK
 * does; --multiplex puts all devices on one connection instead, as a gateway does upstream.
 * The hub runs as a real `strata hub start` child process on its own loopback address; the
 * devices are created through the service REST API (bulk import). Prints one JSON line.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import rhea, { type Connection, type Delivery, type EventContext, type Receiver, type Sender } from 'rhea';
import { hubConnectionString, readHubState } from '../src/hub/local.ts';
import { parseConnectionString } from '../src/identity/connection-string.ts';
import { createSasToken } from '../src/identity/sas.ts';
import { startHubProcess } from '../test/helpers/hub.ts';

const { values: args } = parseArgs({
  options: {
    devices: { type: 'string', default: '100' },
    messages: { type: 'string', default: '2000' },
    size: { type: 'string', default: '256' },
    window: { type: 'string', default: '10' },
    multiplex: { type: 'boolean', default: false },
    /** Use a hub already running from this data directory (e.g. one started with --cpu-prof). */
    'hub-data': { type: 'string' },
  },
});
const DEVICES = Number(args.devices);
const PER_DEVICE = Number(args.messages);
const SIZE = Number(args.size);
const WINDOW = Number(args.window);

interface Device {
  id: string;
  key: string;
}

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

function once<T>(
  emitter: { once(e: string, f: (ctx: EventContext) => void): unknown },
  ok: string,
  fail: string,
  pick: (ctx: EventContext) => T,
): Promise<T> {
  return new Promise((resolve, reject) => {
    emitter.once(ok, (ctx) => resolve(pick(ctx)));
    emitter.once(fail, (ctx) =>
      reject(
        new Error(
          String(
            ((ctx.sender ?? ctx.receiver ?? ctx.connection)?.error as { description?: string } | undefined)
              ?.description ?? fail,
          ),
        ),
      ),
    );
  });
}

function openConnection(host: string, ca: string): Promise<Connection> {
  const c = rhea.create_container().connect({
    host,
    port: readHubState(hubDir)?.ports.amqp ?? 5671,
    transport: 'tls',
    ca,
    reconnect: false,
    idle_time_out: 120_000,
  } as never);
  return once(c, 'connection_open', 'connection_error', () => c);
}

/** One CBS link pair per connection; put-tokens are matched by correlation id. */
class Cbs {
  private readonly waiting = new Map<string, (status: number) => void>();
  constructor(
    private readonly sender: Sender,
    receiver: Receiver,
  ) {
    receiver.on('message', (ctx) => {
      const w = this.waiting.get(String(ctx.message!.correlation_id));
      if (w) w(Number((ctx.message!.application_properties as Record<string, unknown>)['status-code']));
    });
  }
  static async open(conn: Connection): Promise<Cbs> {
    const s = conn.open_sender({ target: { address: '$cbs' } });
    const r = conn.open_receiver({ source: { address: '$cbs' } });
    await Promise.all([
      once(s, 'sender_open', 'sender_error', () => s),
      once(r, 'receiver_open', 'receiver_error', () => r),
    ]);
    return new Cbs(s, r);
  }
  put(host: string, dev: Device): Promise<void> {
    const id = rhea.generate_uuid();
    const audience = `${host}/devices/${dev.id}`;
    const token = createSasToken(audience, dev.key, Math.floor(Date.now() / 1000) + 3600);
    return new Promise((resolve, reject) => {
      this.waiting.set(id, (status) =>
        status === 200 ? resolve() : reject(new Error(`put-token for ${dev.id}: ${status}`)),
      );
      this.sender.send({
        message_id: id,
        reply_to: 'cbs',
        application_properties: { operation: 'put-token', type: 'servicebus.windows.net:sastoken', name: audience },
        body: token,
      });
    });
  }
}

/** One device's sender link with a sliding window of unsettled deliveries. */
class Publisher {
  private sent = 0;
  acked = 0;
  private readonly sentAt = new Map<Delivery, number>();
  private done!: () => void;
  private fail!: (e: Error) => void;
  readonly finished: Promise<void>;
  private sender!: Sender;

  constructor(
    private readonly dev: Device,
    private readonly latencies: Float64Array,
    private readonly latencyBase: number,
  ) {
    this.finished = new Promise((res, rej) => {
      this.done = res;
      this.fail = rej;
    });
  }

  async attach(conn: Connection): Promise<void> {
    const s = conn.open_sender({ target: { address: `/devices/${this.dev.id}/messages/events` }, autosettle: true });
    this.sender = await once(s, 'sender_open', 'sender_error', () => s);
    s.on('accepted', (ctx) => this.settled(ctx.delivery!));
    s.on('rejected', (ctx) =>
      this.fail(new Error(`${this.dev.id}: rejected ${JSON.stringify(ctx.delivery!.remote_state)}`)),
    );
    s.on('released', () => this.fail(new Error(`${this.dev.id}: released`)));
    s.on('sendable', () => this.pump());
    s.on('sender_error', (ctx) => this.fail(new Error(`${this.dev.id}: detached ${ctx.sender?.error?.description}`)));
  }

  start(): void {
    this.pump();
  }

  private settled(d: Delivery): void {
    const t0 = this.sentAt.get(d);
    if (t0 === undefined) return;
    this.sentAt.delete(d);
    this.latencies[this.latencyBase + this.acked] = performance.now() - t0;
    this.acked++;
    if (this.acked === PER_DEVICE) this.done();
    else this.pump();
  }

  private pump(): void {
    while (this.sent < PER_DEVICE && this.sentAt.size < WINDOW && this.sender.sendable()) {
      const body = Buffer.alloc(SIZE, 0x20);
      body.write(JSON.stringify({ d: this.dev.id, n: this.sent, t: Date.now() }));
      const now = performance.now();
      const d = this.sender.send({ body: rhea.message.data_section(body), message_id: `${this.sent}` });
      this.sentAt.set(d, now);
      this.sent++;
    }
  }
}

let hubDir = '';

function runningHub(dataDir: string) {
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
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<void> {
  const hub = args['hub-data'] ? runningHub(args['hub-data']) : await startHubProcess({});
  hubDir = hub.dataDir;
  const conns: Connection[] = [];
  try {
    const cs = parseConnectionString(hub.connectionString);
    const policyToken = createSasToken(
      hub.hostname,
      cs.SharedAccessKey!,
      Math.floor(Date.now() / 1000) + 3600,
      cs.SharedAccessKeyName,
    );
    const runId = randomBytes(3).toString('hex');
    const devices: Device[] = Array.from({ length: DEVICES }, (_, i) => ({
      id: `bench-amqp-${runId}-${i}`,
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

    const latencies = new Float64Array(DEVICES * PER_DEVICE);
    const pubs = devices.map((d, i) => new Publisher(d, latencies, i * PER_DEVICE));
    if (args.multiplex) {
      const conn = await openConnection(hub.address, hub.caPem);
      conns.push(conn);
      const cbs = await Cbs.open(conn);
      await Promise.all(devices.map((d) => cbs.put(hub.hostname, d)));
      await Promise.all(pubs.map((p) => p.attach(conn)));
    } else {
      await Promise.all(
        devices.map(async (d, i) => {
          const conn = await openConnection(hub.address, hub.caPem);
          conns.push(conn);
          await (await Cbs.open(conn)).put(hub.hostname, d);
          await pubs[i]!.attach(conn);
        }),
      );
    }

    const t0 = performance.now();
    for (const p of pubs) p.start();
    await Promise.all(pubs.map((p) => p.finished));
    const seconds = (performance.now() - t0) / 1000;

    const total = DEVICES * PER_DEVICE;
    const sorted = latencies.slice().sort();
    const db = new Database(join(hub.dataDir, 'events.db'), { readonly: true });
    const stored = (
      db.prepare('SELECT COUNT(*) AS n FROM events WHERE dev LIKE ?').get(`bench-amqp-${runId}-%`) as { n: number }
    ).n;
    db.close();
    process.stdout.write(
      `${JSON.stringify({
        bench: 'd2c-amqp',
        connections: args.multiplex ? 1 : DEVICES,
        devices: DEVICES,
        messages: total,
        size: SIZE,
        window: WINDOW,
        seconds: Number(seconds.toFixed(2)),
        msgsPerSecond: Math.round(total / seconds),
        latencyMs: {
          p50: Number(percentile(sorted, 50).toFixed(1)),
          p99: Number(percentile(sorted, 99).toFixed(1)),
          max: Number(sorted[sorted.length - 1]!.toFixed(1)),
        },
        storedInEventStream: stored,
      })}\n`,
    );
    if (stored !== total) process.exitCode = 1;
  } finally {
    for (const c of conns) c.close();
    await hub.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
