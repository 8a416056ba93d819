import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MessageStore, type QueuedMessage, type StoredMessage } from '../../src/store/message-store.ts';
import { Availability, EndpointPump, type DeliveryEndpoint, type PumpSettings } from '../../src/routing/pump.ts';

interface Delivery {
  sender: string;
  n: number;
  priority: number;
  at: number;
}

/** An in-process endpoint that records what it accepts; `down` makes sends fail like a dropped link. */
class RecordingEndpoint implements DeliveryEndpoint {
  readonly availability = new Availability(true);
  down = false;
  /** Simulated time a batch takes on the wire. */
  batchCostMs = 0;
  readonly delivered: Delivery[] = [];
  readonly batches: number[] = [];
  readonly attempts: number[] = [];
  private watchers: Array<() => void> = [];

  constructor(
    readonly name: string,
    readonly maxBatch: number,
    /** 'signal': isAvailable and onAvailable; 'poll': isAvailable only; 'none': neither. */
    private readonly reports: 'signal' | 'poll' | 'none' = 'signal',
  ) {}

  async send(batch: readonly QueuedMessage[]): Promise<void> {
    this.attempts.push(performance.now());
    if (this.down) throw new Error('link down');
    if (this.batchCostMs > 0) await new Promise((r) => setTimeout(r, this.batchCostMs));
    if (this.down) throw new Error('link dropped mid-batch');
    const at = performance.now();
    this.batches.push(batch.length);
    for (const e of batch)
      this.delivered.push({ sender: e.message.sender, n: Number(e.message.appProperties.n), priority: e.priority, at });
    for (const w of this.watchers) w();
  }

  isAvailable(): boolean {
    return this.reports === 'none' || this.availability.isAvailable();
  }

  get onAvailable(): DeliveryEndpoint['onAvailable'] {
    return this.reports === 'signal' ? (l) => this.availability.onAvailable(l) : undefined;
  }

  /** Resolves once `pred` holds (checked after every accepted batch), or fails after `ms`. */
  until(pred: () => boolean, ms = 20_000): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new Error(`endpoint ${this.name}: condition not met within ${ms} ms (delivered ${this.delivered.length})`),
          ),
        ms,
      );
      const check = () => {
        if (!pred()) return;
        clearTimeout(timer);
        this.watchers = this.watchers.filter((w) => w !== check);
        resolve();
      };
      this.watchers.push(check);
    });
  }
}

function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-pump-'));
  const store = MessageStore.open({ path: path.join(dir, 'q.db'), sweepIntervalMs: 0 });
  const pumps: EndpointPump[] = [];
  t.after(async () => {
    for (const p of pumps) await p.stop();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    store,
    pump(ep: DeliveryEndpoint, settings?: PumpSettings) {
      const p = new EndpointPump(store, ep, settings);
      pumps.push(p);
      p.start();
      return p;
    },
  };
}

function msg(sender: string, n: number): StoredMessage {
  return {
    body: Buffer.alloc(256, n & 0xff),
    systemProperties: { messageId: `${sender}-${n}` },
    appProperties: { n: String(n) },
    source: '/messages',
    sender,
  };
}

/** Appends `count` messages round-robin over `senders`, numbering each sender's messages from `from[sender]` (or 0). */
async function appendMany(
  store: MessageStore,
  endpoint: string,
  count: number,
  senders: string[],
  opts: { priority?: number; from?: Record<string, number> } = {},
): Promise<void> {
  const next = new Map<string, number>(Object.entries(opts.from ?? {}));
  const chunk = 5000;
  for (let i = 0; i < count; i += chunk) {
    const batch = [];
    for (let j = i; j < Math.min(count, i + chunk); j++) {
      const sender = senders[j % senders.length];
      const n = next.get(sender) ?? 0;
      next.set(sender, n + 1);
      batch.push(
        store.append({ message: msg(sender, n), targets: [{ endpoint, priority: opts.priority ?? 0, ttlSecs: 7200 }] }),
      );
    }
    await Promise.all(batch);
  }
}

function assertInOrderOnce(delivered: Delivery[], expectPerSender: Map<string, number>): void {
  const next = new Map<string, number>();
  for (const d of delivered) {
    const want = next.get(d.sender) ?? 0;
    assert.equal(d.n, want, `sender ${d.sender}: got ${d.n}, expected ${want} (gap, duplicate or reorder)`);
    next.set(d.sender, want + 1);
  }
  for (const [sender, count] of expectPerSender)
    assert.equal(next.get(sender) ?? 0, count, `sender ${sender} delivered count`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('batches are as large as the endpoint takes', async (t) => {
  const { store, pump } = setup(t);
  await appendMany(store, 'e', 5500, ['a', 'b']);
  const ep = new RecordingEndpoint('e', 1000);
  pump(ep);
  await ep.until(() => ep.delivered.length === 5500);
  assert.deepEqual(ep.batches, [1000, 1000, 1000, 1000, 1000, 500]);
  assertInOrderOnce(
    ep.delivered,
    new Map([
      ['a', 2750],
      ['b', 2750],
    ]),
  );
});

test('a failed batch is retried whole, with exponential backoff and jitter, and nothing is lost or reordered', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('e', 100, 'none');
  ep.down = true;
  const p = pump(ep, { minBackoffMs: 40, maxBackoffMs: 200, random: () => 1 });
  await appendMany(store, 'e', 250, ['a', 'b', 'c']);
  // Attempts at 0, +40, +80, +160, +200, +200 ms with random() = 1 (the top of each jitter window).
  while (ep.attempts.length < 6) await sleep(10);
  ep.down = false;
  await ep.until(() => ep.delivered.length === 250);
  while (p.metrics().sent < 250) await sleep(5);
  const gaps = ep.attempts.slice(1, 6).map((a, i) => a - ep.attempts[i]);
  const expected = [40, 80, 160, 200, 200];
  gaps.forEach((g, i) =>
    assert.ok(
      g >= expected[i] - 5 && g < expected[i] + 150,
      `retry ${i + 1} after ${g.toFixed(0)} ms, expected about ${expected[i]}`,
    ),
  );
  assertInOrderOnce(
    ep.delivered,
    new Map([
      ['a', 84],
      ['b', 83],
      ['c', 83],
    ]),
  );
  const m = p.metrics();
  assert.ok(m.failed >= 6);
  assert.equal(m.failedMessages, m.failed * 100);
  assert.equal(m.sent, 250);
  assert.equal(m.consecutiveFailures, 0);
  assert.equal(m.backoffMs, 0);
  assert.equal(m.lastError, 'link down');
});

test('an endpoint that says when to ask again (retryAfterMs) is retried then, without the backoff growing', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('e', 100, 'none');
  const send = ep.send.bind(ep);
  let refusals = 6;
  ep.send = async (batch) => {
    if (refusals-- > 0) {
      ep.attempts.push(performance.now());
      throw Object.assign(new Error('the parent waits for its own parent'), { retryAfterMs: 30 });
    }
    return send(batch);
  };
  const p = pump(ep, { minBackoffMs: 1000, maxBackoffMs: 60_000, random: () => 1 });
  await appendMany(store, 'e', 50, ['a']);
  await ep.until(() => ep.delivered.length === 50, 5000);
  const gaps = ep.attempts.slice(1, 7).map((a, i) => a - ep.attempts[i]);
  gaps.forEach((g, i) =>
    assert.ok(
      g >= 25 && g < 500,
      `retry ${i + 1} after ${g.toFixed(0)} ms, expected about 30 (the backoff would be 1 s and growing)`,
    ),
  );
  assert.equal(p.metrics().consecutiveFailures, 0);
  assert.equal(p.metrics().failed, 6);
});

test('jitter spreads retries between half and all of the backoff', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('e', 10, 'none');
  ep.down = true;
  const p = pump(ep, { minBackoffMs: 1000, maxBackoffMs: 60_000, random: () => 0 });
  await appendMany(store, 'e', 1, ['a']);
  while (ep.attempts.length < 1) await sleep(5);
  await sleep(20);
  assert.equal(p.metrics().backoffMs, 500, 'first wait with random()=0 is half of 1 s');
  assert.equal(p.metrics().state, 'backoff');
});

test('an endpoint down for a while then back: the drain starts within one second, even deep in backoff', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('$upstream', 1000);
  const p = pump(ep);
  await appendMany(store, '$upstream', 100, ['d']);
  await ep.until(() => ep.delivered.length === 100);

  // The link fails while still looking connected: sends fail and the shared backoff grows (1 s, 2 s, ...).
  ep.down = true;
  await appendMany(store, '$upstream', 50_000, ['d', 'e'], { from: { d: 100 } });
  while (p.metrics().failed < 2) await sleep(20);
  assert.ok(p.metrics().backoffMs >= 1000, `backoff is ${p.metrics().backoffMs} ms`);
  // Then it is known down while the backlog grows, and comes back.
  ep.availability.set(false);
  await appendMany(store, '$upstream', 50_000, ['d', 'e'], { from: { d: 25_100, e: 25_000 } });
  const failedBefore = p.metrics().failed;
  ep.down = false;
  const back = performance.now();
  ep.availability.set(true);
  await ep.until(() => ep.delivered.length > 100, 5000);
  const resumeMs = ep.delivered[100].at - back;
  t.diagnostic(
    `first delivery ${resumeMs.toFixed(1)} ms after the endpoint came back (backoff was ${p.metrics().backoffMs} ms)`,
  );
  assert.ok(resumeMs < 1000, `drain resumed after ${resumeMs.toFixed(0)} ms`);
  assert.equal(p.metrics().failed, failedBefore, 'no sends were tried while the endpoint said it was down');

  await ep.until(() => ep.delivered.length === 100_100, 30_000);
  assertInOrderOnce(
    ep.delivered,
    new Map([
      ['d', 50_100],
      ['e', 50_000],
    ]),
  );
  while (p.metrics().sent < 100_100) await sleep(10);
  while (p.metrics().queueLength > 0) await sleep(10); // the last checkpoint commits
});

test('an endpoint that only reports isAvailable() is polled: the drain resumes within one second', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('e', 1000, 'poll');
  ep.availability.set(false);
  const p = pump(ep);
  await appendMany(store, 'e', 2000, ['a']);
  await sleep(600);
  assert.equal(p.metrics().state, 'unavailable');
  assert.equal(ep.attempts.length, 0, 'no send tried while it says it is down');
  const back = performance.now();
  ep.availability.set(true);
  await ep.until(() => ep.delivered.length > 0, 5000);
  const resumeMs = ep.delivered[0].at - back;
  t.diagnostic(`first delivery ${resumeMs.toFixed(1)} ms after the endpoint came back`);
  assert.ok(resumeMs < 1000, `resumed after ${resumeMs.toFixed(0)} ms`);
});

/**
 * Appends one live message every `everyMs` from `sender` until `stop()`; returns each message's
 * delay from acknowledgement to delivery.
 */
function liveProducer(store: MessageStore, ep: RecordingEndpoint, sender: string, everyMs: number, from = 0) {
  const acked = new Map<number, number>();
  let running = true;
  const done = (async () => {
    for (let n = from; running; n++) {
      await store.append({ message: msg(sender, n), targets: [{ endpoint: ep.name, priority: 0, ttlSecs: 7200 }] });
      acked.set(n, performance.now());
      await sleep(everyMs);
    }
  })();
  return {
    async stop() {
      running = false;
      await done;
    },
    /** Ack-to-delivery delay of each delivered message. */
    delays(): number[] {
      return ep.delivered
        .filter((d) => d.sender === sender && acked.has(d.n))
        .map((d) => d.at - (acked.get(d.n) ?? d.at));
    },
    count: () => acked.size,
  };
}

test('while a 100,000-message backlog drains, live messages get a share of every batch (liveShare 0.5): bounded delay', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('$upstream', 500);
  ep.batchCostMs = 2; // a round trip per batch, like a real link
  ep.availability.set(false);
  const p = pump(ep, { liveShare: 0.5 });
  await appendMany(store, '$upstream', 100_000, ['s0', 's1', 's2', 's3']);
  const start = performance.now();
  ep.availability.set(true);
  const live = liveProducer(store, ep, 'live', 10);
  await ep.until(() => ep.delivered.filter((d) => d.sender !== 'live').length === 100_000, 40_000);
  const drainMs = performance.now() - start;
  await live.stop();
  await ep.until(() => ep.delivered.filter((d) => d.sender === 'live').length === live.count(), 5000);

  const delays = live.delays().sort((a, b) => a - b);
  const during = ep.delivered.filter((d) => d.sender === 'live' && d.at < start + drainMs).length;
  t.diagnostic(
    `backlog drained in ${drainMs.toFixed(0)} ms; ${during} live messages arrived during the drain; ` +
      `live delay p50 ${delays[delays.length >> 1].toFixed(1)} ms, max ${delays[delays.length - 1].toFixed(1)} ms`,
  );
  assert.ok(during >= 3, 'live messages flowed while the backlog drained');
  assert.ok(
    delays[delays.length - 1] < 1000,
    `live delay bound 1 s, worst was ${delays[delays.length - 1].toFixed(0)} ms`,
  );
  assertInOrderOnce(
    ep.delivered.filter((d) => d.sender !== 'live'),
    new Map([
      ['s0', 25_000],
      ['s1', 25_000],
      ['s2', 25_000],
      ['s3', 25_000],
    ]),
  );
  assertInOrderOnce(
    ep.delivered.filter((d) => d.sender === 'live'),
    new Map([['live', live.count()]]),
  );
  while (p.metrics().sent < 100_000 + live.count()) await sleep(5);
});

test('with the default strict order, live messages follow the backlog and wait no longer than its drain', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('$upstream', 500);
  ep.batchCostMs = 2;
  ep.availability.set(false);
  pump(ep);
  await appendMany(store, '$upstream', 100_000, ['s0', 's1', 's2', 's3']);
  const start = performance.now();
  ep.availability.set(true);
  const live = liveProducer(store, ep, 's0', 10, 25_000); // the same sender as part of the backlog
  await ep.until(() => ep.delivered.length >= 100_000, 40_000);
  const drainMs = performance.now() - start;
  await sleep(100);
  await live.stop();
  await ep.until(() => ep.delivered.length === 100_000 + live.count(), 5000);

  const delays = live.delays().sort((a, b) => a - b);
  t.diagnostic(
    `backlog drained in ${drainMs.toFixed(0)} ms; live delay p50 ${delays[delays.length >> 1].toFixed(1)} ms, ` +
      `max ${delays[delays.length - 1].toFixed(1)} ms`,
  );
  // s0's live messages continue its numbering: strict order per sender across backlog and live.
  assertInOrderOnce(
    ep.delivered,
    new Map([
      ['s0', 25_000 + live.count()],
      ['s1', 25_000],
      ['s2', 25_000],
      ['s3', 25_000],
    ]),
  );
  assert.ok(delays[delays.length - 1] < drainMs + 1000, 'no live message waited beyond the backlog drain');
});

test('higher priorities go first without starving lower ones', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('e', 100);
  ep.availability.set(false);
  pump(ep);
  await appendMany(store, 'e', 3000, ['lo'], { priority: 9 });
  await appendMany(store, 'e', 3000, ['hi'], { priority: 0 });
  await appendMany(store, 'e', 3000, ['mid'], { priority: 1 });
  ep.availability.set(true);
  await ep.until(() => ep.delivered.length === 9000);
  // First batch: every waiting priority has a place, the highest first, in proportion 512:256:1.
  const first = ep.delivered.slice(0, 100);
  const count = (ds: Delivery[], p: number) => ds.filter((d) => d.priority === p).length;
  assert.deepEqual([count(first, 0), count(first, 1), count(first, 9)], [66, 33, 1]);
  assert.deepEqual(
    first.map((d) => d.priority),
    [...first.map((d) => d.priority)].sort((a, b) => a - b),
    'highest priority first in a batch',
  );
  // Priority 9 advanced while priority 0 still had messages.
  let lastHi = ep.delivered.length - 1;
  while (ep.delivered[lastHi].priority !== 0) lastHi--;
  assert.ok(count(ep.delivered.slice(0, lastHi), 9) >= 40, 'priority 9 got at least one slot per batch');
  assert.ok(count(ep.delivered.slice(0, lastHi), 1) > 1000);
  for (const s of ['lo', 'hi', 'mid']) {
    const ns = ep.delivered.filter((d) => d.sender === s).map((d) => d.n);
    assert.deepEqual(
      ns,
      Array.from({ length: 3000 }, (_, i) => i),
      `order of ${s}`,
    );
  }
});

test('metrics: queue length, sent, expired and failed per endpoint', async (t) => {
  let clock = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-pump-'));
  const store = MessageStore.open({ path: path.join(dir, 'q.db'), sweepIntervalMs: 0, now: () => clock });
  const ep = new RecordingEndpoint('e', 50);
  const p = new EndpointPump(store, ep, { minBackoffMs: 10, maxBackoffMs: 20 });
  t.after(async () => {
    await p.stop();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  ep.availability.set(false);
  p.start();
  await store.append({ message: msg('a', 0), targets: [{ endpoint: 'e', priority: 0, ttlSecs: 5 }] });
  await appendMany(store, 'e', 30, ['b']);
  assert.equal(p.metrics().queueLength, 31);
  assert.equal(p.metrics().state, 'unavailable');
  clock += 6000;
  ep.down = true;
  ep.availability.set(true);
  while (p.metrics().failed < 2) await sleep(5);
  ep.down = false;
  await ep.until(() => ep.delivered.length === 30);
  await sleep(20);
  const m = p.metrics();
  assert.equal(m.sent, 30);
  assert.equal(m.expired, 1);
  assert.ok(m.failed >= 2);
  assert.equal(m.queueLength, 0);
  assert.equal(m.state, 'idle');
  assert.ok(
    ep.delivered.every((d) => d.sender === 'b'),
    'the expired message was not sent',
  );
});

test('stop waits for the batch in flight and sends nothing after', async (t) => {
  const { store, pump } = setup(t);
  const ep = new RecordingEndpoint('e', 10);
  ep.batchCostMs = 50;
  const p = pump(ep);
  await appendMany(store, 'e', 100, ['a']);
  while (ep.attempts.length === 0) await sleep(5);
  await p.stop();
  const n = ep.delivered.length;
  assert.equal(p.metrics().state, 'stopped');
  await appendMany(store, 'e', 10, ['a'], { from: { a: 100 } });
  await sleep(100);
  assert.equal(ep.delivered.length, n);
});

test('with two batches in flight, both travel at once; when the first fails, the second is sent again after it: nothing lost, order kept', async (t) => {
  const { store, pump } = setup(t);
  await appendMany(store, 'e', 400, ['a', 'b']);
  let inFlight = 0;
  let maxSeen = 0;
  let calls = 0;
  const delivered: Delivery[] = [];
  const ep: DeliveryEndpoint = {
    name: 'e',
    maxBatch: 100,
    maxInFlight: 2,
    async send(batch) {
      const call = ++calls;
      inFlight++;
      maxSeen = Math.max(maxSeen, inFlight);
      // The first batch fails after the second one was taken: the second must not be checkpointed.
      await sleep(call === 1 ? 60 : 20);
      inFlight--;
      if (call === 1) throw new Error('link dropped');
      for (const e of batch)
        delivered.push({ sender: e.message.sender, n: Number(e.message.appProperties.n), priority: e.priority, at: 0 });
    },
  };
  const p = pump(ep, { minBackoffMs: 10, maxBackoffMs: 20 });
  while (store.queueLength('e') > 0 || p.metrics().sent < 400) await sleep(10);
  assert.equal(maxSeen, 2, 'two batches were in flight together');
  // The second batch arrived once before the failure was known, then again after the first: a
  // duplicate run, never a gap or a reorder within what was checkpointed.
  const firstSecond = delivered.slice(0, 100);
  assert.deepEqual(
    firstSecond.map((d) => d.n),
    Array.from({ length: 100 }, (_, i) => 50 + (i >> 1)),
    'the second batch, taken while the first was failing',
  );
  assertInOrderOnce(
    delivered.slice(100),
    new Map([
      ['a', 200],
      ['b', 200],
    ]),
  );
});
