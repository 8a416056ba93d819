import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { WorkerPlan } from '../fixtures/store-worker.ts';

const WORKER = path.resolve(import.meta.dirname, '../fixtures/store-worker.ts');
const ROOT = path.resolve(import.meta.dirname, '../..');

interface Run {
  child: ChildProcess;
  acks: Array<[string, number]>;
  coldAcks: number;
  appended: boolean;
  done: Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    result?: Record<string, Record<string, number>>;
  }>;
  waitFor(pred: () => boolean, ms: number): Promise<void>;
}

function startWorker(plan: WorkerPlan, children: ChildProcess[]): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', WORKER, JSON.stringify(plan)], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn' },
  });
  children.push(child);
  let result: Record<string, Record<string, number>> | undefined;
  let stderr = '';
  const watchers = new Set<() => void>();
  const run: Run = {
    child,
    acks: [],
    coldAcks: 0,
    appended: false,
    done: new Promise((resolve) =>
      child.on('exit', (code, signal) => {
        if (code !== 0 && signal === null) console.error(stderr);
        resolve({ code, signal, result });
      }),
    ),
    waitFor(pred, ms) {
      if (pred()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          watchers.delete(check);
          reject(new Error(`worker: condition not met within ${ms} ms (${run.acks.length} acks)\n${stderr}`));
        }, ms);
        const check = () => {
          if (!pred()) return;
          clearTimeout(timer);
          watchers.delete(check);
          resolve();
        };
        watchers.add(check);
      });
    },
  };
  let partial = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (line.startsWith('ack ')) {
        const [, sender, n] = line.split(' ');
        run.acks.push([sender, Number(n)]);
      } else if (line.startsWith('ackcold ')) run.coldAcks++;
      else if (line === 'appended') run.appended = true;
      else if (line.startsWith('done ')) result = JSON.parse(line.slice(5));
    }
    for (const w of [...watchers]) w();
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  return run;
}

interface Delivery {
  endpoint: string;
  seq: number;
  key: string;
  sender: string;
  n: number;
}

function readDeliveries(file: string): Delivery[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [endpoint, seq, sender, n] = line.split(' ');
      return { endpoint, seq: Number(seq), key: `${sender} ${n}`, sender, n: Number(n) };
    });
}

test('kill -9 while accepting and forwarding at full speed: every acknowledged message is delivered, in order per sender, none twice from the store, expired ones dropped and counted', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-kill9-'));
  const children: ChildProcess[] = [];
  t.after(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const SENDERS = 10;
  const PER_SENDER = 10_000;
  const files = (run: number) => ({
    delivered: path.join(dir, `delivered-${run}.log`),
    checkpoints: path.join(dir, `checkpoints-${run}.log`),
  });
  const base = {
    db: path.join(dir, 'store.db'),
    senders: SENDERS,
    perSender: PER_SENDER,
    inflight: 2000,
    coldTtlSecs: 1,
  };

  // Run 1: killed mid-stream, with the cold endpoint down so its short-lived messages wait.
  const run1 = startWorker(
    { ...base, ...files(1), from: new Array(SENDERS).fill(0), coldEvery: 10, coldUp: false },
    children,
  );
  await run1.waitFor(() => run1.acks.length >= 25_000 && readDeliveries(files(1).delivered).length >= 5_000, 40_000);
  run1.child.kill('SIGKILL');
  const killedAt = Date.now();
  const exit1 = await run1.done;
  assert.equal(exit1.signal, 'SIGKILL');
  assert.ok(!run1.appended, 'killed before it had accepted everything');
  assert.ok(run1.coldAcks > 0);

  // Let every cold message pass its 1 s TTL, then restart: continue each sender after its last acknowledged message.
  const lastAcked = new Array(SENDERS).fill(-1);
  for (const [sender, n] of run1.acks)
    lastAcked[Number(sender.slice(1))] = Math.max(lastAcked[Number(sender.slice(1))], n);
  await new Promise((r) => setTimeout(r, Math.max(0, killedAt + 1200 - Date.now())));
  const run2 = startWorker(
    { ...base, ...files(2), from: lastAcked.map((n) => n + 1), coldEvery: 0, coldUp: true },
    children,
  );
  const exit2 = await run2.done;
  assert.equal(exit2.code, 0, 'second run finished');
  assert.ok(run2.appended);

  const d1 = readDeliveries(files(1).delivered);
  const d2 = readDeliveries(files(2).delivered);
  const up1 = d1.filter((d) => d.endpoint === 'up');
  const up2 = d2.filter((d) => d.endpoint === 'up');

  // Every acknowledged message is delivered.
  const deliveredKeys = new Set([...up1, ...up2].map((d) => d.key));
  const missing = [...run1.acks, ...run2.acks].map(([s, n]) => `${s} ${n}`).filter((k) => !deliveredKeys.has(k));
  assert.deepEqual(missing.slice(0, 10), [], `${missing.length} acknowledged messages never delivered`);
  for (let s = 0; s < SENDERS; s++) {
    for (let n = 0; n < PER_SENDER; n++) assert.ok(deliveredKeys.has(`s${s} ${n}`), `s${s} ${n} delivered`);
  }

  // None twice from the store's point of view: within a run no entry is handed out twice, and
  // nothing whose checkpoint was committed before the kill comes back after it.
  for (const ds of [up1, up2])
    assert.equal(new Set(ds.map((d) => d.seq)).size, ds.length, 'an entry delivered twice within one run');
  const checkpointed1 = new Set(fs.readFileSync(files(1).checkpoints, 'utf8').split('\n').filter(Boolean).map(Number));
  assert.ok(checkpointed1.size > 0);
  const again = up2.filter((d) => checkpointed1.has(d.seq));
  assert.deepEqual(again.slice(0, 5), [], 'entries checkpointed before the kill were delivered again');
  // What is redelivered is the window between delivery and checkpoint commit (at least once).
  const seen1 = new Set(up1.map((d) => d.seq));
  const redelivered = up2.filter((d) => seen1.has(d.seq)).length;
  t.diagnostic(
    `run 1: ${run1.acks.length} acknowledged, ${up1.length} delivered, ${checkpointed1.size} checkpoints committed; ` +
      `run 2: ${run2.acks.length} acknowledged, ${up2.length} delivered, ${redelivered} redelivered from the uncommitted window`,
  );
  assert.ok(redelivered <= 2_000, `redelivered ${redelivered}, more than the in-flight window`);

  // In order per sender: across both runs, each message seen for the first time comes after every earlier one of its sender.
  const highest = new Map<string, number>();
  const firstSeen = new Set<string>();
  for (const d of [...up1, ...up2]) {
    if (firstSeen.has(d.key)) continue;
    firstSeen.add(d.key);
    assert.ok(d.n > (highest.get(d.sender) ?? -1), `${d.sender}: ${d.n} after ${highest.get(d.sender)}`);
    highest.set(d.sender, d.n);
  }

  // Expired messages: none delivered, all counted, queue empty.
  assert.equal(d2.filter((d) => d.endpoint === 'cold').length, 0, 'expired messages were delivered');
  const cold = exit2.result!.cold;
  assert.ok(cold.expired >= run1.coldAcks, `expired ${cold.expired} of ${run1.coldAcks} acknowledged cold messages`);
  assert.equal(cold.queueLength, 0);
  assert.equal(exit2.result!.up.queueLength, 0);
});
