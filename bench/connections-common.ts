/**
 * What the connection benchmarks share: a memory probe preloaded into the measured process
 * (SIGUSR2 -> process.memoryUsage() after two full GCs, written to a file), RSS split by kind of
 * mapping, an idle authenticated MQTT/TLS client, and per-connection arithmetic.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import mqttPacket from 'mqtt-packet';
import { createSasToken } from '../src/identity/sas.ts';

export const PROBE = `
const fs = require('node:fs');
process.on('SIGUSR2', () => {
  if (global.gc) { global.gc(); global.gc(); }
  const m = process.memoryUsage();
  const spaces = {};
  for (const s of require('node:v8').getHeapSpaceStatistics()) spaces[s.space_name] = { size: s.space_size, used: s.space_used_size, physical: s.physical_space_size };
  m.spaces = spaces;
  if (process.env.STRATA_BENCH_SNAPSHOTS) require('node:v8').writeHeapSnapshot(process.env.STRATA_BENCH_MEM_FILE + '.' + Date.now() + '.heapsnapshot');
  fs.writeFileSync(process.env.STRATA_BENCH_MEM_FILE, JSON.stringify({ ...m, at: Date.now() }));
});
`;

export interface Memory {
  rss: number;
  /** RSS of the brk heap: glibc's main malloc arena (OpenSSL, libuv, sockets' native parts). */
  brkHeap: number;
  /** RSS of the other anonymous mappings (V8's heap pages among them). */
  otherAnon: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  spaces: Record<string, { size: number; used: number; physical: number }>;
}

export async function memoryOf(proc: ChildProcess, file: string): Promise<Memory> {
  // Let sockets settle and timers fire before reading.
  await sleep(1500);
  const before = Date.now();
  proc.kill('SIGUSR2');
  // A heap snapshot (STRATA_BENCH_SNAPSHOTS) takes a while.
  for (let i = 0; i < 2400; i++) {
    await sleep(25);
    try {
      const m = JSON.parse(readFileSync(file, 'utf8')) as Memory & { at: number };
      if (m.at >= before) return { ...m, ...smapsRss(proc.pid!) };
    } catch {
      /* not written yet */
    }
  }
  throw new Error('the hub did not answer the memory probe');
}

/**
 * RSS by kind of mapping from /proc/PID/smaps: `[heap]` is glibc's main malloc arena (OpenSSL,
 * libuv, sockets' native parts); other anonymous mappings are V8's heap pages, thread stacks and
 * malloc's other arenas; the rest is files (code).
 */
export function smapsRss(pid: number): { brkHeap: number; otherAnon: number } {
  const lines = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  let kind: 'brk' | 'anon' | 'file' = 'file';
  const out = { brkHeap: 0, otherAnon: 0 };
  for (const line of lines) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (head)
      kind =
        head[2]!.trim() === '[heap]' ? 'brk' : head[1] === '0' && !head[2]!.trim().startsWith('/') ? 'anon' : 'file';
    else if (line.startsWith('Rss:') && kind !== 'file')
      out[kind === 'brk' ? 'brkHeap' : 'otherAnon'] += Number(line.split(/\s+/)[1]) * 1024;
  }
  return out;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An authenticated MQTT connection that then says nothing (keep-alive 0: never pinged, never timed out). */
export async function idleDevice(
  host: string,
  port: number,
  ca: string,
  id: string,
  key: string,
  o: { hubHostname?: string; localAddress?: string } = {},
): Promise<TLSSocket> {
  const socket = tlsConnect({ host, port, ca, localAddress: o.localAddress } as never);
  await new Promise<void>((res, rej) => {
    socket.once('secureConnect', res);
    socket.once('error', rej);
  });
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const connack = new Promise<void>((res, rej) => {
    parser.once('packet', (p: any) =>
      p.cmd === 'connack' && p.returnCode === 0 ? res() : rej(new Error(`${id}: ${p.cmd} ${p.returnCode}`)),
    );
    socket.once('close', () => rej(new Error(`${id}: closed before CONNACK`)));
  });
  socket.on('data', (d) => parser.parse(d));
  socket.on('error', () => undefined);
  const audience = o.hubHostname ?? host;
  const token = createSasToken(`${audience}/devices/${id}`, key, Math.floor(Date.now() / 1000) + 3600);
  socket.write(
    mqttPacket.generate({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: true,
      clientId: id,
      keepalive: 0,
      username: `${audience}/${id}/?api-version=2021-04-12`,
      password: Buffer.from(token),
    }),
  );
  await connack;
  return socket;
}

export const perConnection = (a: Memory, b: Memory, n: number) => ({
  rssKiB: round((b.rss - a.rss) / n / 1024),
  heapKiB: round((b.heapUsed - a.heapUsed) / n / 1024),
  externalKiB: round((b.external - a.external) / n / 1024),
  mallocHeapKiB: round((b.brkHeap - a.brkHeap) / n / 1024),
  otherAnonKiB: round((b.otherAnon - a.otherAnon) / n / 1024),
  v8HeapCommittedKiB: round((b.heapTotal - a.heapTotal) / n / 1024),
  v8NewSpacePhysicalKiB: round((b.spaces.new_space!.physical - a.spaces.new_space!.physical) / n / 1024),
  v8OldSpacePhysicalKiB: round((b.spaces.old_space!.physical - a.spaces.old_space!.physical) / n / 1024),
  v8OtherSpacesPhysicalKiB: round((otherSpaces(b) - otherSpaces(a)) / n / 1024),
});
const otherSpaces = (m: Memory) =>
  Object.entries(m.spaces).reduce(
    (sum, [name, s]) => (name === 'new_space' || name === 'old_space' ? sum : sum + s.physical),
    0,
  );
export const round = (x: number) => Math.round(x * 10) / 10;
export const mib = (m: Memory) => ({
  rssMiB: round(m.rss / 2 ** 20),
  mallocHeapMiB: round(m.brkHeap / 2 ** 20),
  v8HeapUsedMiB: round(m.heapUsed / 2 ** 20),
  v8HeapTotalMiB: round(m.heapTotal / 2 ** 20),
  externalMiB: round(m.external / 2 ** 20),
});

export async function inBatches<T>(count: number, size: number, make: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < count; i += size)
    out.push(...(await Promise.all(Array.from({ length: Math.min(size, count - i) }, (_, j) => make(i + j)))));
  return out;
}

/** The median of each figure over the rounds. */
export function medians(rows: Array<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(rows[0] ?? {})) {
    const v = rows.map((r) => r[k]!).sort((a, b) => a - b);
    out[k] = v.length % 2 ? v[(v.length - 1) / 2]! : round((v[v.length / 2 - 1]! + v[v.length / 2]!) / 2);
  }
  return out;
}
