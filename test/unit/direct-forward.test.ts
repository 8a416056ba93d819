import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { DirectForwarder, type ForwardItem } from '../../src/edge/direct-forward.ts';
import { EngineError } from '../../src/model/errors.ts';
import type { AuthResult, IdentityRef } from '../../src/model/identity.ts';
import type { ForwardedBatch, Message } from '../../src/model/message.ts';
import { authMethodText } from '../../src/identity/auth-method.ts';
import {
  encodeBatchOf,
  originOfBatch,
  readBatch,
  readOrigin,
  readRelaySenders,
} from '../../src/protocols/amqp/batch.ts';
import { decodeBatch } from '../../src/protocols/amqp/decode-message.ts';
import type { MessageStore } from '../../src/store/message-store.ts';
import { storedMessageOf } from '../../src/store/sender-message.ts';
import { UpstreamError, type SendOutcome } from '../../src/upstream/errors.ts';
import type { DirectTelemetry } from '../../src/upstream/parent-link.ts';
import { tempStore } from '../helpers/temp-store.ts';

const BATCH_STREAM = 'child-store/0';
/** How long the forwarder waits for an unreachable parent in these tests. */
const HOLD_MS = 40;
const STREAM = `leaf1|${BATCH_STREAM}`;
const UPSTREAM = [{ endpoint: '$upstream', priority: 0, ttlSecs: 0 }];
const auth: AuthResult = { identity: { deviceId: 'leaf1' }, kind: 'sas', authMethod: authMethodText('device', 'sas') };

/** Messages `from`..`to` of the child's stream, the first naming `prev` (default: the one before it). */
function itemsOf(from: number, to: number, prev = from - 1): ForwardItem[] {
  const out: ForwardItem[] = [];
  for (let seq = from; seq <= to; seq++) {
    const message: Message = { body: Buffer.from(`m${seq}`), properties: { n: String(seq) } };
    out.push({ auth, message, origin: { stream: STREAM, seq, prev: seq === from ? prev : seq - 1 } });
  }
  return out;
}

function batchOf(items: readonly ForwardItem[]): ForwardedBatch {
  const payload = encodeBatchOf(
    items.map((i) => i.message),
    { stream: BATCH_STREAM, prev: items[0]!.origin!.prev, seqs: items.map((i) => i.origin!.seq) },
  );
  return { payload, stream: BATCH_STREAM };
}

interface SendCall {
  identity: IdentityRef;
  /** Relay sends: every sender the batch names. */
  senders?: readonly IdentityRef[];
  payload: Buffer;
  answer(outcome: SendOutcome): void;
  fail(err: Error): void;
}

/** The parent link, scripted: each send waits for the test to answer it. */
class Parent implements DirectTelemetry {
  private isUp = true;
  private readonly waiting = new Set<() => void>();
  readonly calls: SendCall[] = [];

  get up(): boolean {
    return this.isUp;
  }

  set up(value: boolean) {
    this.isUp = value;
    if (value) for (const wake of [...this.waiting]) wake();
  }

  whenUsable(timeoutMs: number): Promise<boolean> {
    if (this.isUp) return Promise.resolve(true);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.waiting.delete(wake);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.waiting.delete(wake);
        resolve(false);
      }, timeoutMs);
      this.waiting.add(wake);
    });
  }
  /** Runs inside send(), before the call is recorded (what held at the moment of sending). */
  onSend?: (identity: IdentityRef, payload: Buffer) => void;

  usable(): boolean {
    return this.up;
  }

  send(identity: IdentityRef, payload: Buffer): Promise<SendOutcome> {
    this.onSend?.(identity, payload);
    return new Promise<SendOutcome>((resolve, reject) => {
      this.calls.push({ identity, payload, answer: resolve, fail: reject });
    });
  }

  /** Whether the parent takes relay batches. */
  relay = true;

  relayUsable(): boolean {
    return this.up && this.relay;
  }

  sendRelay(senders: readonly IdentityRef[], payload: Buffer): Promise<SendOutcome> {
    this.onSend?.(senders[0]!, payload);
    return new Promise<SendOutcome>((resolve, reject) => {
      this.calls.push({ identity: senders[0]!, senders, payload, answer: resolve, fail: reject });
    });
  }

  /** The n-th send (1-based), once it happened. */
  async call(n: number): Promise<SendCall> {
    await until(() => this.calls.length >= n, `send #${n}`);
    return this.calls[n - 1]!;
  }
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Lets pending callbacks (and a store commit or two) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 5));
}

interface Tracked {
  state: 'pending' | 'resolved' | 'rejected';
  error?: unknown;
  done: Promise<void>;
}

function track(p: Promise<void>): Tracked {
  const t: Tracked = { state: 'pending', done: Promise.resolve() };
  t.done = p.then(
    () => {
      t.state = 'resolved';
    },
    (err: unknown) => {
      t.state = 'rejected';
      t.error = err;
    },
  );
  return t;
}

async function rejectsWith(p: Promise<void> | undefined, code: string): Promise<void> {
  assert.ok(p, 'forward() passed the batch on (or refused it) rather than leaving it to the store');
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof EngineError, `an EngineError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

const files = tempStore;

interface Harness {
  store: MessageStore;
  parent: Parent;
  fwd: DirectForwarder;
  /** Each storeBatch call's items. */
  storeCalls: ForwardItem[][];
  /** Each passed() count. */
  passedCounts: number[];
  /** What upstreamOnly answers. */
  routes: { upstreamOnly: boolean };
}

/** A forwarder on `store`; storeBatch stores as the gateway does (a resend of what is stored is not stored again). */
function harness(store: MessageStore, parent = new Parent(), holdMs = HOLD_MS): Harness {
  const storeCalls: ForwardItem[][] = [];
  const passedCounts: number[] = [];
  const routes = { upstreamOnly: true };
  const fwd = new DirectForwarder({
    direct: parent,
    store,
    upstreamOnly: () => routes.upstreamOnly,
    storeBatch: async (items) => {
      storeCalls.push([...items]);
      const fresh = items.filter((i) => !i.origin || !store.isForwardedStored(i.origin));
      if (fresh.length === 0) return store.whenDurable();
      await store.appendAll(
        fresh.map((i) => ({ message: storedMessageOf(i.auth, i.message), targets: UPSTREAM, origin: i.origin })),
      );
    },
    passed: (n) => passedCounts.push(n),
    holdMs,
    log: pino({ level: 'silent' }),
  });
  return { store, parent, fwd, storeCalls, passedCounts, routes };
}

function assertNothingStored(h: Harness): void {
  assert.equal(h.storeCalls.length, 0, 'storeBatch was not called');
  assert.equal(h.store.hasQueued('$upstream'), false, 'nothing is queued in $upstream');
  assert.equal(h.store.queueLength('$upstream'), 0, 'nothing is stored in $upstream');
}

function bodyOf(m: { body?: unknown }): string {
  const b = m.body as Buffer | { content?: unknown } | undefined;
  if (Buffer.isBuffer(b)) return b.toString();
  if (b && Buffer.isBuffer(b.content)) return b.content.toString();
  return String(b);
}

test('a fresh stream with the parent up and $upstream empty is passed on as it came, answered once the parent took it', async (t) => {
  const h = harness(files(t).open());
  const items = itemsOf(1, 3);
  const batch = batchOf(items);
  const p = h.fwd.forward(items, batch);
  assert.ok(p, 'passed on');
  const passing = track(p);
  const call = await h.parent.call(1);
  assert.deepEqual(call.identity, { deviceId: 'leaf1' });
  assert.ok(call.payload.equals(batch.payload), 'the payload is the batch as it came');
  await settle();
  assert.equal(passing.state, 'pending', 'not answered before the parent answered');
  assert.deepEqual(h.passedCounts, [], 'nothing counted before the parent took it');
  call.answer({ ok: true });
  await passing.done;
  assert.equal(passing.state, 'resolved');
  assert.deepEqual(h.passedCounts, [3]);
  for (const it of items) assert.equal(h.fwd.isPassed(it.origin!), true, `seq ${it.origin!.seq} is passed`);
  assert.equal(h.fwd.isPassed({ stream: STREAM, seq: 4, prev: 3 }), false, 'what followed is not');
  assert.equal(h.fwd.forward(items, batch), undefined, 'a resend is left to the store path');
  await settle();
  assert.equal(h.parent.calls.length, 1, 'nothing sent again');
  assertNothingStored(h);
});

test('a fresh stream is left to the store when $upstream has something queued, the parent is down, or the routes send it elsewhere too', async (t) => {
  const f = files(t);
  const store = f.open();
  const h = harness(store);
  const items = itemsOf(1, 3);
  const batch = batchOf(items);

  // Something queued in $upstream (waiting for its commit, then committed): the batch must not overtake it.
  const other = {
    identity: { deviceId: 'other' },
    kind: 'sas',
    authMethod: authMethodText('device', 'sas'),
  } satisfies AuthResult;
  const appended = store.append({
    message: storedMessageOf(other, { body: Buffer.from('x'), properties: {} }),
    targets: UPSTREAM,
  });
  assert.equal(store.hasQueued('$upstream'), true);
  assert.equal(h.fwd.forward(items, batch), undefined, 'queued, not yet committed');
  await appended;
  assert.equal(h.fwd.forward(items, batch), undefined, 'queued and committed');
  await settle();
  assert.equal(h.parent.calls.length, 0, 'nothing sent');
  assert.equal(h.storeCalls.length, 0);

  // $upstream empty again, the parent down.
  const entries = store.read('$upstream', { priority: 0, afterSeq: 0, limit: 10 }).entries;
  await store.checkpoint('$upstream', entries);
  assert.equal(store.hasQueued('$upstream'), false);
  h.parent.up = false;
  assert.equal(h.fwd.forward(items, batch), undefined, 'parent down');

  // Parent up, but the routes send the messages somewhere besides $upstream.
  h.parent.up = true;
  h.routes.upstreamOnly = false;
  assert.equal(h.fwd.forward(items, batch), undefined, 'not for $upstream alone');
  await settle();
  assert.equal(h.parent.calls.length, 0, 'nothing sent');
  assert.equal(h.storeCalls.length, 0);

  // Control: with all three in order the same batch is passed on.
  h.routes.upstreamOnly = true;
  const p = h.fwd.forward(items, batch);
  assert.ok(p);
  (await h.parent.call(1)).answer({ ok: true });
  await p;
});

test('a batch the parent released stays in doubt: refused while the parent is down, passed on again once it is up', async (t) => {
  const h = harness(files(t).open());
  const items = itemsOf(1, 3);
  const batch = batchOf(items);
  const p1 = h.fwd.forward(items, batch);
  (await h.parent.call(1)).answer({ ok: false, condition: 'released', description: 'x', released: true });
  await rejectsWith(p1, 'unavailable');
  assert.deepEqual(h.passedCounts, []);
  assert.equal(h.fwd.isPassed(items[0]!.origin!), false);

  h.parent.up = false;
  await rejectsWith(h.fwd.forward(items, batch), 'parent-unreachable');
  await settle();
  assert.equal(h.parent.calls.length, 1, 'nothing sent');
  assertNothingStored(h);

  h.parent.up = true;
  const p3 = h.fwd.forward(items, batch);
  assert.ok(p3, 'passed on again');
  const again = await h.parent.call(2);
  assert.ok(again.payload.equals(batch.payload));
  again.answer({ ok: true });
  await p3;
  assert.deepEqual(h.passedCounts, [3]);
  assertNothingStored(h);
});

test('a stream with a batch in doubt is held on this path whole: a later batch of it is refused while the parent is down, not stored ahead of the one in doubt', async (t) => {
  const h = harness(files(t).open());
  const first = itemsOf(1, 3);
  const p1 = h.fwd.forward(first, batchOf(first));
  (await h.parent.call(1)).answer({ ok: false, condition: 'com.microsoft:timeout', description: 'the hub went away' });
  await rejectsWith(p1, 'unavailable');
  h.parent.up = false;
  // The child's next batch (its second one in flight) does not touch 1-3.
  const later = itemsOf(4, 6);
  await rejectsWith(h.fwd.forward(later, batchOf(later)), 'parent-unreachable');
  assertNothingStored(h);
  h.parent.up = true;
  // The child sends again from 1 (everything before acknowledged: prev 0); the parent takes it.
  const again = itemsOf(1, 6, 0);
  const p2 = h.fwd.forward(again, batchOf(again));
  assert.ok(p2, 'passed on');
  (await h.parent.call(2)).answer({ ok: true });
  await p2;
  // Nothing in doubt any more: a fresh batch with the parent down is stored as usual.
  h.parent.up = false;
  const fresh = itemsOf(7, 8);
  assert.equal(h.fwd.forward(fresh, batchOf(fresh)), undefined, 'left to the store');
});

test('a batch that can only go to the parent waits for it while it is unreachable, and goes the moment it is back', async (t) => {
  const h = harness(files(t).open(), new Parent(), 10_000);
  const first = itemsOf(1, 3);
  const p1 = h.fwd.forward(first, batchOf(first));
  (await h.parent.call(1)).answer({ ok: false, condition: 'released', description: 'x', released: true });
  await rejectsWith(p1, 'unavailable');
  h.parent.up = false;
  const again = track(h.fwd.forward(first, batchOf(first))!);
  await settle();
  assert.equal(again.state, 'pending', 'held, neither refused nor stored');
  assert.equal(h.parent.calls.length, 1);
  const backAt = Date.now();
  h.parent.up = true;
  (await h.parent.call(2)).answer({ ok: true });
  await again.done;
  assert.equal(again.state, 'resolved');
  assert.ok(Date.now() - backAt < 1000, 'sent at once, not after the hold');
  assertNothingStored(h);
});

test('while a batch is in flight and the parent goes down, the next batch of the stream is refused, not stored', async (t) => {
  const h = harness(files(t).open());
  const first = itemsOf(1, 3);
  const p1 = track(h.fwd.forward(first, batchOf(first))!);
  const call = await h.parent.call(1);
  h.parent.up = false;
  const second = itemsOf(4, 6);
  await rejectsWith(h.fwd.forward(second, batchOf(second)), 'parent-unreachable');
  await settle();
  assert.equal(h.parent.calls.length, 1, 'the second was not sent');
  assertNothingStored(h);
  assert.equal(p1.state, 'pending');
  call.answer({ ok: true });
  await p1.done;
  assert.equal(p1.state, 'resolved');
});

test("a parent gateway's own 'parent-unreachable' reaches the child as it came, so the child retries soon all the way down", async (t) => {
  const h = harness(files(t).open());
  const items = itemsOf(1, 3);
  const p = h.fwd.forward(items, batchOf(items));
  (await h.parent.call(1)).answer({
    ok: false,
    condition: 'strata:parent-unreachable',
    description: 'the hub is away',
  });
  await rejectsWith(p, 'parent-unreachable');
});

test('the parent refusing a batch as too large reaches the child as too-large', async (t) => {
  const h = harness(files(t).open());
  const items = itemsOf(1, 3);
  const p = h.fwd.forward(items, batchOf(items));
  (await h.parent.call(1)).answer({ ok: false, condition: 'amqp:link:message-size-exceeded', description: 'too big' });
  await rejectsWith(p, 'too-large');
  assert.deepEqual(h.passedCounts, []);
  assertNothingStored(h);
});

test('a sender the parent does not know is stored here; a send that failed otherwise is refused, not stored', async (t) => {
  const h = harness(files(t).open());
  const items = itemsOf(1, 3);
  const p = h.fwd.forward(items, batchOf(items));
  assert.ok(p);
  (await h.parent.call(1)).fail(new UpstreamError('no such device', 'amqp:not-found', 404));
  await p;
  assert.equal(h.storeCalls.length, 1);
  assert.deepEqual(
    h.storeCalls[0]!.map((i) => i.origin!.seq),
    [1, 2, 3],
  );
  assert.equal(h.store.queueLength('$upstream'), 3, 'stored here');
  for (const it of items) assert.equal(h.store.isForwardedStored(it.origin!), true);
  assert.deepEqual(h.passedCounts, []);

  const h2 = harness(files(t).open());
  const p2 = h2.fwd.forward(items, batchOf(items));
  (await h2.parent.call(1)).fail(new Error('link detached'));
  await rejectsWith(p2, 'unavailable');
  await settle();
  assertNothingStored(h2);
  assert.deepEqual(h2.passedCounts, []);
});

test('after a restart the passing mark covers what was passed on, and such a batch is refused while the parent is down', async (t) => {
  const f = files(t);
  const store = f.open();
  const h = harness(store);
  const items = itemsOf(1, 3);
  const batch = batchOf(items);
  const p = h.fwd.forward(items, batch);
  (await h.parent.call(1)).answer({ ok: true });
  await p;
  await store.close();

  const reopened = f.open();
  const mark = reopened.passingMarksAtOpen().get(STREAM);
  assert.ok(mark !== undefined && mark >= 3, `a mark of at least 3 on disk, found ${mark}`);
  const parent = new Parent();
  parent.up = false;
  const h2 = harness(reopened, parent);
  await rejectsWith(h2.fwd.forward(items, batch), 'parent-unreachable');
  const later = itemsOf(2, 3, 1);
  await rejectsWith(h2.fwd.forward(later, batchOf(later)), 'parent-unreachable');
  await settle();
  assert.equal(parent.calls.length, 0);
  assertNothingStored(h2);
  assert.equal(h2.fwd.isPassed(items[0]!.origin!), false, 'what the previous run passed is not claimed as passed');
});

test('the passing mark is on disk before the batch is sent', async (t) => {
  const f = files(t);
  const store = f.open();
  assert.equal(store.passingMarksAtOpen().size, 0);
  const parent = new Parent();
  const covered: boolean[] = [];
  parent.onSend = () => covered.push(store.markPassing(STREAM, 3) === undefined);
  const h = harness(store, parent);
  const items = itemsOf(1, 3);
  const p = h.fwd.forward(items, batchOf(items));
  assert.ok(p);
  assert.equal(store.markPassing(STREAM, 3) === undefined, false, 'no mark yet when forward() returns');
  await parent.call(1);
  assert.deepEqual(covered, [true], 'a mark covering the batch was on disk when send() was called');
  // The answer never comes (this process dies): the mark is what the next run finds.
  await store.close();
  const reopened = f.open();
  assert.ok((reopened.passingMarksAtOpen().get(STREAM) ?? 0) >= 3);
});

test('a batch partly stored here already: only the rest is passed on, named by its own origin', async (t) => {
  const store = files(t).open();
  const h = harness(store);
  const all = itemsOf(1, 6);
  // 1-3 stored before (for an endpoint other than $upstream, so $upstream stays empty).
  await store.appendAll(
    all.slice(0, 3).map((i) => ({
      message: storedMessageOf(i.auth, i.message),
      targets: [{ endpoint: 'elsewhere', priority: 0, ttlSecs: 0 }],
      origin: i.origin,
    })),
  );
  assert.equal(store.isForwardedStored(all[2]!.origin!), true);
  assert.equal(store.hasQueued('$upstream'), false);

  const p = h.fwd.forward(all, batchOf(all));
  assert.ok(p);
  const passing = track(p);
  const call = await h.parent.call(1);
  const { messages, annotations } = readBatch(call.payload);
  assert.deepEqual(messages.map(bodyOf), ['m4', 'm5', 'm6']);
  const { origin, problem } = readOrigin(annotations, messages.length);
  assert.equal(problem, undefined);
  assert.deepEqual(origin, { stream: BATCH_STREAM, prev: 3, seqs: [4, 5, 6] });
  await settle();
  assert.equal(passing.state, 'pending');
  call.answer({ ok: true });
  await passing.done;
  assert.equal(passing.state, 'resolved');
  assert.deepEqual(h.passedCounts, [3]);
  for (const it of all.slice(3)) assert.equal(h.fwd.isPassed(it.origin!), true);
  assert.equal(store.queueLength('$upstream'), 0, 'the known ones were not stored again');
  assert.equal(store.queueLength('elsewhere'), 3);
});

test('after a restart, a stream with messages of its own queued here is not passed on ahead of them', async (t) => {
  const f = files(t);
  const store = f.open();
  const h = harness(store);
  // 1-3 passed on; then the parent goes down and 4-6 are stored here.
  const first = itemsOf(1, 3);
  const p = h.fwd.forward(first, batchOf(first));
  (await h.parent.call(1)).answer({ ok: true });
  await p;
  h.parent.up = false;
  const second = itemsOf(4, 6);
  assert.equal(h.fwd.forward(second, batchOf(second)), undefined, 'left to the store');
  // ... which the gateway's store path then does:
  await store.appendAll(
    second.map((i) => ({ message: storedMessageOf(i.auth, i.message), targets: UPSTREAM, origin: i.origin })),
  );
  await store.close();

  // Restarted with 4-6 still queued; the parent is back; 7-9 come.
  const reopened = f.open();
  assert.equal(reopened.queueLength('$upstream'), 3);
  const h2 = harness(reopened);
  const third = itemsOf(7, 9);
  const p2 = h2.fwd.forward(third, batchOf(third));
  await settle();
  assert.equal(h2.parent.calls.length, 0, '7-9 were sent to the parent while 4-6 of the same stream wait here');
  assert.equal(p2, undefined, '7-9 are stored behind 4-6');
});

test('a batch after one that failed at the parent is refused, not passed ahead of it: held while the parent was away, or sent on before the child heard', async (t) => {
  const h = harness(files(t).open(), new Parent(), 10_000);
  const first = itemsOf(1, 3);
  const p1 = h.fwd.forward(first, batchOf(first));
  const call1 = await h.parent.call(1);
  // The parent goes away with 1-3 unanswered; the child's next batch waits for it.
  h.parent.up = false;
  const second = itemsOf(4, 6);
  const held = track(h.fwd.forward(second, batchOf(second))!);
  call1.answer({ ok: false, condition: 'released', description: 'the hub went away', released: true });
  await rejectsWith(p1, 'unavailable');
  h.parent.up = true;
  await held.done;
  assert.equal(held.state, 'rejected', '4-6 would have reached the parent before 1-3');
  assert.equal((held.error as EngineError).code, 'parent-unreachable', 'the child sends again soon');
  // With the parent up, a later batch of the child's that names 4-6 as before it is refused too.
  const third = itemsOf(7, 8);
  await rejectsWith(h.fwd.forward(third, batchOf(third)), 'parent-unreachable');
  assert.equal(h.parent.calls.length, 1, 'nothing went ahead of 1-3');
  assertNothingStored(h);
  // The child sends again from 1 (all before acknowledged: prev 0): passed on, in order.
  const again = itemsOf(1, 8, 0);
  const p2 = h.fwd.forward(again, batchOf(again));
  assert.ok(p2, 'passed on');
  const call2 = await h.parent.call(2);
  assert.deepEqual(
    readBatch(call2.payload).messages.map((m) => bodyOf(m)),
    ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8'],
  );
  call2.answer({ ok: true });
  await p2;
  const next = itemsOf(9, 9);
  const p3 = h.fwd.forward(next, batchOf(next));
  (await h.parent.call(3)).answer({ ok: true });
  await p3;
});

test('a batch sent on while the one before it is still in flight goes (the link keeps their order)', async (t) => {
  const h = harness(files(t).open());
  const first = itemsOf(1, 3);
  const p1 = track(h.fwd.forward(first, batchOf(first))!);
  await h.parent.call(1);
  const second = itemsOf(4, 6);
  const p2 = track(h.fwd.forward(second, batchOf(second))!);
  await h.parent.call(2);
  h.parent.calls[0]!.answer({ ok: true });
  h.parent.calls[1]!.answer({ ok: true });
  await p1.done;
  await p2.done;
  assert.equal(p1.state, 'resolved');
  assert.equal(p2.state, 'resolved');
});

test('a batch refused for good (the child drops it) holds nothing back: the next one goes on', async (t) => {
  const h = harness(files(t).open());
  const first = itemsOf(1, 3);
  const p1 = h.fwd.forward(first, batchOf(first));
  (await h.parent.call(1)).answer({ ok: false, condition: 'amqp:link:message-size-exceeded', description: 'too big' });
  await rejectsWith(p1, 'too-large');
  const second = itemsOf(4, 6);
  const p2 = h.fwd.forward(second, batchOf(second));
  (await h.parent.call(2)).answer({ ok: true });
  await p2;
});

/** A child gateway's relay batch: messages of leaf1 and leaf2 alternating, on one stream. */
function relayOf(from: number, to: number): { items: ForwardItem[]; batch: ForwardedBatch } {
  const items = itemsOf(from, to).map((it, i) => ({
    ...it,
    auth: i % 2 === 0 ? auth : { ...auth, identity: { deviceId: 'leaf2' } },
    origin: { ...it.origin!, stream: `edge3/$edgeHub|${BATCH_STREAM}` },
  }));
  const payload = encodeBatchOf(
    items.map((i) => i.message),
    {
      stream: BATCH_STREAM,
      prev: items[0]!.origin!.prev,
      seqs: items.map((i) => i.origin!.seq),
      senders: items.map((i) => i.auth.identity.deviceId),
    },
  );
  return { items, batch: { payload, stream: BATCH_STREAM, relay: true } };
}

test("a child's relay batch goes on as it came on the parent's relay link, naming each of its senders once", async (t) => {
  const h = harness(files(t).open());
  const { items, batch } = relayOf(1, 4);
  const passing = track(h.fwd.forward(items, batch)!);
  const call = await h.parent.call(1);
  assert.deepEqual(call.senders, [{ deviceId: 'leaf1' }, { deviceId: 'leaf2' }]);
  assert.ok(call.payload.equals(batch.payload), 'the payload is the batch as it came');
  call.answer({ ok: true });
  await passing.done;
  assert.equal(passing.state, 'resolved');
  assert.deepEqual(h.passedCounts, [4]);
  assertNothingStored(h);
});

test('a relay batch, part of which the parent has, goes on re-encoded with the senders of the rest', async (t) => {
  const h = harness(files(t).open());
  const first = relayOf(1, 2);
  const p1 = track(h.fwd.forward(first.items, first.batch)!);
  (await h.parent.call(1)).answer({ ok: true });
  await p1.done;
  // Sent again with two new ones after it: only those go up, still naming their senders.
  const again = relayOf(1, 4);
  const p2 = track(h.fwd.forward(again.items, again.batch)!);
  const call = await h.parent.call(2);
  const { messages, annotations } = decodeBatch(call.payload);
  assert.deepEqual(
    messages.map((m) => m.body.toString()),
    ['m3', 'm4'],
  );
  assert.deepEqual(readRelaySenders(annotations, 2).senders, [{ deviceId: 'leaf1' }, { deviceId: 'leaf2' }]);
  assert.deepEqual(originOfBatch(annotations, 2), { stream: BATCH_STREAM, prev: 2, seqs: [3, 4] });
  call.answer({ ok: true });
  await p2.done;
  assert.equal(p2.state, 'resolved');
});

test('a relay batch for a parent without a relay link is stored here, unless its stream is in doubt', async (t) => {
  const parent = new Parent();
  parent.relay = false;
  const h = harness(files(t).open(), parent);
  const { items, batch } = relayOf(1, 2);
  assert.equal(h.fwd.forward(items, batch), undefined, 'left to the store path');
  assert.equal(parent.calls.length, 0);
  // The parent had it before (in doubt after a failure): refused for now, never stored here.
  parent.relay = true;
  const next = relayOf(3, 4);
  const p = track(h.fwd.forward(next.items, next.batch)!);
  (await parent.call(1)).answer({ ok: false, condition: 'amqp:connection:forced', description: 'link dropped' });
  await p.done;
  parent.relay = false;
  await rejectsWith(h.fwd.forward(next.items, next.batch), 'parent-unreachable');
});
