/**
 * Memory of idle connections at the hub: RSS (and V8 heap, separately) per idle authenticated
 * MQTT/TLS connection, and what an unauthenticated flood costs and leaves behind once it closes.
 *
 *   node --import tsx bench/idle-connections.ts [--connections 2000] [--flood 5000] [--flood-sources 20]
 *
 * The hub runs as a real `strata hub start` child process; a small preload in it answers SIGUSR2
 * with process.memoryUsage() after two full GCs, so heap and RSS are read apart. Steps:
 * baseline, N authenticated idle MQTT connections (keep-alive 0), those closed, a flood of
 * TLS-handshaken sockets that never send CONNECT (from several loopback addresses, under the
 * per-address cap) plus as many bare TCP connections, and the flood closed; then more floods
 * (`--flood-rounds`), to tell a leak (grows each round) from memory the allocator keeps and
 * reuses (levels off). Prints one JSON line.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { parseArgs } from 'node:util';
import mqttPacket from 'mqtt-packet';
import { parseConnectionString } from '../src/identity/connection-string.ts';
import { createSasToken } from '../src/identity/sas.ts';
import { startHubProcess, type HubProcess } from '../test/helpers/hub.ts';

const { values: args } = parseArgs({
  options: {
    connections: { type: 'string', default: '2000' },
    flood: { type: 'string', default: '5000' },
    'flood-sources': { type: 'string', default: '20' },
    'flood-rounds': { type: 'string', default: '3' },
  },
});
const N = Number(args.connections);
const FLOOD = Number(args.flood);
const FLOOD_SOURCES = Number(args['flood-sources']);
const FLOOD_ROUNDS = Math.max(1, Number(args['flood-rounds']));

const PROBE = `
const fs = require('node:fs');
process.on('SIGUSR2', () => {
  if (global.gc) { global.gc(); global.gc(); }
  const m = process.memoryUsage();
  if (process.env.STRATA_BENCH_SNAPSHOTS) require('node:v8').writeHeapSnapshot(process.env.STRATA_BENCH_MEM_FILE + '.' + Date.now() + '.heapsnapshot');
  fs.writeFileSync(process.env.STRATA_BENCH_MEM_FILE, JSON.stringify({ ...m, at: Date.now() }));
});
`;

interface Memory {
  rss: number;
  /** RSS of the brk heap: glibc's main malloc arena (OpenSSL, libuv, sockets' native parts). */
  brkHeap: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
}

async function memoryOf(hub: HubProcess, file: string): Promise<Memory> {
  // Let sockets settle and timers fire before reading.
  await sleep(1500);
  const before = Date.now();
  hub.proc.kill('SIGUSR2');
  // A heap snapshot (STRATA_BENCH_SNAPSHOTS) takes a while.
  for (let i = 0; i < 2400; i++) {
    await sleep(25);
    try {
      const m = JSON.parse(readFileSync(file, 'utf8')) as Memory & { at: number };
      if (m.at >= before) return { ...m, brkHeap: brkHeapRss(hub.proc.pid!) };
    } catch {
      /* not written yet */
    }
  }
  throw new Error('the hub did not answer the memory probe');
}

/** The [heap] mapping's RSS from /proc/PID/smaps: what malloc holds, apart from V8's own mappings. */
function brkHeapRss(pid: number): number {
  const lines = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  let inHeap = false;
  for (const line of lines) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inHeap = line.trimEnd().endsWith('[heap]');
    else if (inHeap && line.startsWith('Rss:')) return Number(line.split(/\s+/)[1]) * 1024;
  }
  return 0;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function rest(host: string, ca: string, token: string, method: string, path: string, body: unknown): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = request(
      { host, port: 443, method, path: `${path}?api-version=2021-04-12`, ca, headers: { authorization: token, 'content-type': 'application/json', 'content-length': data.length } },
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

/** An authenticated MQTT connection that then says nothing (keep-alive 0: never pinged, never timed out). */
async function idleDevice(host: string, ca: string, id: string, key: string): Promise<TLSSocket> {
  const socket = tlsConnect({ host, port: 8883, ca });
  await new Promise<void>((res, rej) => {
    socket.once('secureConnect', res);
    socket.once('error', rej);
  });
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const connack = new Promise<void>((res, rej) => {
    parser.once('packet', (p: any) => (p.cmd === 'connack' && p.returnCode === 0 ? res() : rej(new Error(`${id}: ${p.cmd} ${p.returnCode}`))));
    socket.once('close', () => rej(new Error(`${id}: closed before CONNACK`)));
  });
  socket.on('data', (d) => parser.parse(d));
  socket.on('error', () => undefined);
  const token = createSasToken(`${host}/devices/${id}`, key, Math.floor(Date.now() / 1000) + 3600);
  socket.write(
    mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: id, keepalive: 0, username: `${host}/${id}/?api-version=2021-04-12`, password: Buffer.from(token) }),
  );
  await connack;
  return socket;
}

const perConnection = (a: Memory, b: Memory, n: number) => ({
  rssKiB: round((b.rss - a.rss) / n / 1024),
  heapKiB: round((b.heapUsed - a.heapUsed) / n / 1024),
  externalKiB: round((b.external - a.external) / n / 1024),
  mallocHeapKiB: round((b.brkHeap - a.brkHeap) / n / 1024),
});
const round = (x: number) => Math.round(x * 10) / 10;
const mib = (m: Memory) => ({
  rssMiB: round(m.rss / 2 ** 20),
  mallocHeapMiB: round(m.brkHeap / 2 ** 20),
  v8HeapUsedMiB: round(m.heapUsed / 2 ** 20),
  v8HeapTotalMiB: round(m.heapTotal / 2 ** 20),
  externalMiB: round(m.external / 2 ** 20),
});

async function inBatches<T>(count: number, size: number, make: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < count; i += size) out.push(...(await Promise.all(Array.from({ length: Math.min(size, count - i) }, (_, j) => make(i + j)))));
  return out;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-bench-idle-'));
  const probe = join(dir, 'probe.cjs');
  const memFile = join(dir, 'memory.json');
  writeFileSync(probe, PROBE);
  const hub = await startHubProcess({ nodeArgs: ['--expose-gc', '--require', probe], env: { STRATA_BENCH_MEM_FILE: memFile, STRATA_LOG_LEVEL: 'error' } });
  try {
    const cs = parseConnectionString(hub.connectionString);
    const policyToken = createSasToken(hub.hostname, cs.SharedAccessKey, Math.floor(Date.now() / 1000) + 3600, cs.SharedAccessKeyName);
    const runId = randomBytes(3).toString('hex');
    const devices = Array.from({ length: N }, (_, i) => ({ id: `idle-${runId}-${i}`, key: randomBytes(32).toString('base64') }));
    for (let i = 0; i < devices.length; i += 100) {
      const chunk = devices.slice(i, i + 100).map((d) => ({
        id: d.id,
        importMode: 'create',
        status: 'enabled',
        authentication: { type: 'sas', symmetricKey: { primaryKey: d.key, secondaryKey: randomBytes(32).toString('base64') } },
      }));
      const r = await rest(hub.address, hub.caPem, policyToken, 'POST', '/devices', chunk);
      if (r.status !== 200 || !JSON.parse(r.body).isSuccessful) throw new Error(`bulk create failed: ${r.status} ${r.body}`);
    }
    // Warm up TLS and the engine with a few connections first, so the baseline holds the one-off costs.
    for (const s of await inBatches(20, 20, (i) => idleDevice(hub.address, hub.caPem, devices[i]!.id, devices[i]!.key))) s.destroy();
    const base = await memoryOf(hub, memFile);

    const idle = await inBatches(N, 100, (i) => idleDevice(hub.address, hub.caPem, devices[i]!.id, devices[i]!.key));
    const withIdle = await memoryOf(hub, memFile);
    for (const s of idle) s.destroy();
    const idleClosed = await memoryOf(hub, memFile);

    // The flood: half TLS handshakes that never send CONNECT, half bare TCP; spread over addresses under the caps.
    const sources = Array.from({ length: FLOOD_SOURCES }, () => `127.${randomInt(2, 251)}.${randomInt(2, 251)}.${randomInt(2, 251)}`);
    const floodOnce = () => inBatches(FLOOD, 250, (i) => {
      const localAddress = sources[i % sources.length]!;
      return new Promise<Socket>((resolve) => {
        const s: Socket = i % 2 ? netConnect({ host: hub.address, port: i % 4 === 1 ? 8883 : 5671, localAddress }) : tlsConnect({ host: hub.address, port: 8883, ca: hub.caPem, localAddress } as never);
        s.on('error', () => resolve(s));
        s.once(i % 2 ? 'connect' : 'secureConnect', () => resolve(s));
        s.resume();
      });
    });
    const flood = await floodOnce();
    const during = await memoryOf(hub, memFile);
    const floodHeld = flood.filter((s) => !s.destroyed).length;
    for (const s of flood) s.destroy();
    await sleep(3000);
    const afterFlood = await memoryOf(hub, memFile);
    // More floods the same size: memory kept after the first is reused, not added to (no leak).
    const afterEachFlood = [mib(afterFlood)];
    for (let round = 1; round < FLOOD_ROUNDS; round++) {
      for (const s of await floodOnce()) s.destroy();
      await sleep(3000);
      afterEachFlood.push(mib(await memoryOf(hub, memFile)));
    }

    process.stdout.write(
      `${JSON.stringify({
        bench: 'idle-connections',
        connections: N,
        perIdleAuthenticatedMqttTls: perConnection(base, withIdle, N),
        baseline: mib(base),
        withIdle: mib(withIdle),
        idleClosed: mib(idleClosed),
        flood: { sockets: FLOOD, sources: FLOOD_SOURCES, openAtMeasurement: floodHeld },
        duringFlood: mib(during),
        afterFlood: mib(afterFlood),
        afterFloodOverBaselineMiB: round((afterFlood.rss - base.rss) / 2 ** 20),
        afterEachFlood,
      })}\n`,
    );
  } finally {
    await hub.stop();
    if (!process.env.STRATA_BENCH_SNAPSHOTS) rmSync(dir, { recursive: true, force: true });
    else process.stderr.write(`heap snapshots kept in ${dir}\n`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
