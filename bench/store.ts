/**
 * Store-and-forward benchmark: append+forward throughput of 256-byte messages through the
 * durable store and one endpoint pump, then the drain rate of a large backlog.
 *
 *   node --import tsx bench/store.ts [--messages 500000] [--backlog 1000000] [--batch 1000] [--inflight 4096]
 *
 * The endpoint only counts what it receives, so the figures are the store's and the pump's cost.
 * `inflight` is how many appends wait for their acknowledgement at once (many devices, each
 * with a few QoS 1 publishes outstanding).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MessageStore, type StoredMessage, type QueuedMessage } from '../src/store/message-store.ts';
import { EndpointPump, type DeliveryEndpoint } from '../src/routing/pump.ts';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const MESSAGES = arg('messages', 500_000);
const BACKLOG = arg('backlog', 1_000_000);
const BATCH = arg('batch', 1000);
const INFLIGHT = arg('inflight', 4096);
const SENDERS = 100;

class CountingEndpoint implements DeliveryEndpoint {
  readonly name = '$upstream';
  readonly maxBatch = BATCH;
  received = 0;
  onCount: ((n: number) => void) | undefined;
  async send(batch: readonly QueuedMessage[]): Promise<void> {
    this.received += batch.length;
    this.onCount?.(this.received);
  }
}

function message(sender: number, n: number): StoredMessage {
  return {
    body: Buffer.alloc(256, n & 0xff),
    systemProperties: { messageId: `m-${sender}-${n}`, contentType: 'application/json', contentEncoding: 'utf-8' },
    appProperties: { seq: String(n) },
    source: '/messages',
    sender: `device-${sender}`,
  };
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

async function appendAll(store: MessageStore, count: number, latencies?: number[]): Promise<void> {
  let next = 0;
  await new Promise<void>((resolve, reject) => {
    let outstanding = 0;
    const pump = () => {
      while (outstanding < INFLIGHT && next < count) {
        const i = next++;
        const t0 = latencies ? performance.now() : 0;
        outstanding++;
        store
          .append({
            message: message(i % SENDERS, i),
            targets: [{ endpoint: '$upstream', priority: 0, ttlSecs: 7200 }],
          })
          .then(() => {
            if (latencies) latencies.push(performance.now() - t0);
            outstanding--;
            if (next < count) pump();
            else if (outstanding === 0) resolve();
          }, reject);
      }
    };
    pump();
  });
}

function until(ep: CountingEndpoint, n: number): Promise<void> {
  if (ep.received >= n) return Promise.resolve();
  return new Promise((resolve) => {
    ep.onCount = (c) => {
      if (c >= n) {
        ep.onCount = undefined;
        resolve();
      }
    };
  });
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-bench-store-'));
  const load0 = os.loadavg();
  try {
    // 1. append + forward at once
    {
      const store = MessageStore.open({ path: path.join(dir, 'a.db') });
      const ep = new CountingEndpoint();
      const pump = new EndpointPump(store, ep);
      pump.start();
      const latencies: number[] = [];
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      await appendAll(store, MESSAGES, latencies);
      const tAcked = performance.now();
      await until(ep, MESSAGES);
      const t1 = performance.now();
      const cpu = process.cpuUsage(cpu0);
      latencies.sort((a, b) => a - b);
      console.log(
        `append+forward: ${MESSAGES} msgs of 256 B, ${SENDERS} senders, ${INFLIGHT} in flight, batch ${BATCH}`,
      );
      console.log(`  acknowledged (durable): ${Math.round(MESSAGES / ((tAcked - t0) / 1000))} msg/s`);
      console.log(
        `  delivered end to end:   ${Math.round(MESSAGES / ((t1 - t0) / 1000))} msg/s (${((t1 - t0) / 1000).toFixed(2)} s)`,
      );
      console.log(
        `  ack latency ms: p50 ${pct(latencies, 50).toFixed(1)} p99 ${pct(latencies, 99).toFixed(1)} max ${latencies[latencies.length - 1].toFixed(1)}`,
      );
      const cpuUs = cpu.user + cpu.system;
      console.log(
        `  process cpu: ${((cpuUs / 1000 / (t1 - t0)) * 100).toFixed(0)}% of one core, ${(cpuUs / MESSAGES).toFixed(1)} µs per message ` +
          `(${Math.round(MESSAGES / (cpuUs / 1e6))} msg/s per core-second)`,
      );
      await pump.stop();
      await store.close();
    }
    // 2. drain a backlog
    {
      const file = path.join(dir, 'b.db');
      let store = MessageStore.open({ path: file });
      const t0 = performance.now();
      await appendAll(store, BACKLOG);
      const tFill = performance.now();
      await store.close();
      store = MessageStore.open({ path: file }); // cold start: nothing of the backlog is in memory
      const tOpen = performance.now();
      const ep = new CountingEndpoint();
      const pump = new EndpointPump(store, ep);
      const t1 = performance.now();
      const cpu0 = process.cpuUsage();
      pump.start();
      await until(ep, BACKLOG);
      const t2 = performance.now();
      const cpu = process.cpuUsage(cpu0);
      console.log(
        `backlog: ${BACKLOG} msgs stored at ${Math.round(BACKLOG / ((tFill - t0) / 1000))} msg/s; reopen ${(tOpen - tFill).toFixed(0)} ms`,
      );
      console.log(
        `  drained at ${Math.round(BACKLOG / ((t2 - t1) / 1000))} msg/s (${((t2 - t1) / 1000).toFixed(2)} s), db file ${(fs.statSync(file).size / 1e6).toFixed(0)} MB, ` +
          `${((cpu.user + cpu.system) / BACKLOG).toFixed(1)} µs cpu per message`,
      );
      await pump.stop();
      await store.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    const load1 = os.loadavg();
    console.log(
      `machine: ${os.cpus().length} cores; load average (1 min) before ${load0[0].toFixed(2)}, after ${load1[0].toFixed(2)}`,
    );
  }
}

await main();
