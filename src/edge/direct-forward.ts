import { traceOrigin, tracingOrigins } from '../util/origin-trace.ts';
import { took, tracing } from '../util/latency-trace.ts';
import type { Logger } from 'pino';
import { EngineError } from '../model/errors.ts';
import { identityKey, type AuthResult, type IdentityRef } from '../model/identity.ts';
import type { ForwardedBatch, Message } from '../model/message.ts';
import { type BatchOrigin, encodeBatchOf } from '../protocols/amqp/batch.ts';
import { engineCodeOfCondition } from '../protocols/amqp/errors.ts';
import type { MessageStore } from '../store/message-store.ts';
import { cover, covers, type StreamCoverage } from '../store/origin-watermarks.ts';
import type { ForwardedOrigin } from '../model/message.ts';
import { isPermanentForMessage, UpstreamError, type DirectTelemetry } from '../upstream/index.ts';

/**
 * A child gateway's batch passed to the parent as it came, instead of being stored here and sent
 * again from this store. The child already holds every message of it on disk and keeps it until
 * this gateway answers; this gateway answers only once the parent took the batch, so an
 * acknowledged message is still on disk somewhere above the child. What this saves a middle layer
 * is the store (writing, reading back, deleting) and encoding the messages again: most of its
 * cost per message.
 *
 * When it applies: the batch names its origin (the child's store and numbers), every message of
 * it goes to `$upstream` and nowhere else, the link to the parent is up, and `$upstream` has
 * nothing queued here (else the batch would overtake what is queued). Otherwise the batch is
 * stored as usual, with one exception below.
 *
 * Exactly once: the batch keeps the child's origin, so the parent stores each message once
 * however often the child sends it. The one thing that must not happen is a batch passed on whose
 * answer was lost (link dropped, or this process died) coming again from the child and being
 * stored here: it would then go up under this store's numbering and the parent, which may hold it
 * under the child's, would store it twice. So a stream with a batch in flight or unanswered stays
 * on this path, all of it (a later batch stored here would arrive before the one in doubt), and
 * while the parent is unreachable its batches wait for it a few seconds and are then refused for
 * now (the child keeps them and sends them again a second later); across a restart, the passing marks written before each batch
 * (store/passing-marks.ts) say how far a stream may have gone. Streams on this path keep their
 * order: they enter it only with nothing of theirs queued here, and leave it only with nothing in
 * flight or in doubt.
 */

export interface DirectForwardDeps {
  direct: DirectTelemetry;
  store: Pick<
    MessageStore,
    'isForwardedStored' | 'forwardedInFlight' | 'markPassing' | 'passingMarksAtOpen' | 'hasQueued' | 'hasQueuedFrom'
  >;
  /** True when the routes send this message to `$upstream` and nowhere else. */
  upstreamOnly(auth: AuthResult, message: Message): boolean;
  /** Stores a batch as usual (the path for a sender the parent refuses). */
  storeBatch(items: readonly ForwardItem[]): Promise<void>;
  /** Told how many messages the parent took on this path. */
  passed(count: number): void;
  /** How long a batch that can only go to the parent waits for it when it is unreachable (default 8 s). */
  holdMs?: number;
  log: Logger;
}

export interface ForwardItem {
  auth: AuthResult;
  message: Message;
  origin?: ForwardedOrigin;
}

interface StreamState {
  /** What the parent took on this path, as a child's resend finds it (store/origin-watermarks.ts cover). */
  passed: StreamCoverage;
  /** Batches passed on and not answered yet. */
  inFlight: number;
  /** Numbers [lo, hi] passed on without an answer that says the parent has them: in flight, or failed. */
  doubt: Array<[number, number]>;
  /**
   * Batches [lo, hi] that failed on their way (sent or not): the child sends again from them,
   * and nothing after them may go on before (it would reach the parent first).
   */
  failed: Array<[number, number]>;
  /** A previous run may have passed everything up to this on (its passing mark). */
  before: number;
  /** Whether the previous run left messages of this stream queued here was looked at. */
  beforeChecked: boolean;
}

/** Unanswered ranges kept per stream; past it the two oldest merge (more is then treated as in doubt, never less). */
const MAX_DOUBT = 64;
const REFUSAL_LOG_MS = 10_000;
/** How long a batch waits for an unreachable parent before it is refused (the child gives up on an answer after 20 s). */
const HOLD_MS = 8000;

export class DirectForwarder {
  private readonly streams = new Map<string, StreamState>();
  private lastRefusalLog = 0;

  constructor(private readonly deps: DirectForwardDeps) {}

  /** True when the parent took this message on this path already (a resend needs nothing more). */
  isPassed(origin: ForwardedOrigin): boolean {
    const st = this.streams.get(origin.stream);
    return st !== undefined && covers(st.passed, origin.seq);
  }

  /**
   * Passes the batch on when it may (see above): the promise answers the child. Undefined: store
   * it as usual.
   */
  forward(items: readonly ForwardItem[], batch: ForwardedBatch): Promise<void> | undefined {
    const stream = items[0]?.origin?.stream;
    if (stream === undefined) return undefined;
    const st = this.state(stream);
    const { store } = this.deps;
    // What the gateway has already (stored here, being stored, or taken by the parent) is answered without sending.
    const rest: ForwardItem[] = [];
    let known = false;
    for (const it of items) {
      const o = it.origin;
      if (!o || o.stream !== stream) return undefined;
      if (store.isForwardedStored(o) || store.forwardedInFlight(o) || covers(st.passed, o.seq)) known = true;
      else rest.push(it);
    }
    // A batch that failed on its way is sent again by the child, and whatever it sent after it
    // must not go ahead of it (held while the parent was away, or sent before the child heard).
    const from = items[0]!.origin!.seq;
    if (st.failed.length > 0) st.failed = st.failed.filter(([lo]) => lo < from && !covers(st.passed, lo));
    if (st.failed.length > 0) return Promise.reject(this.overtaking(stream));
    // All known: the store path answers that (it waits for whatever is still being stored).
    if (rest.length === 0) return undefined;
    const first = rest[0]!.origin!;
    if (st.before > 0 && !st.beforeChecked) {
      // Once a run (a scan): its own messages queued here from the previous run were stored
      // after anything it passed on then was answered (a stream leaves this path only with
      // nothing in doubt). Then nothing of it is in doubt, and it must not overtake them.
      st.beforeChecked = true;
      if (store.hasQueued('$upstream') && store.hasQueuedFrom('$upstream', rest[0]!.auth.identity)) st.before = 0;
    }
    // Anything of the stream in doubt holds all of it on this path: a later batch stored here
    // would reach the parent before the one in doubt, which the child is still sending again.
    const must = st.inFlight > 0 || st.doubt.length > 0 || st.before > 0;
    if (!rest.every((it) => this.deps.upstreamOnly(it.auth, it.message))) return undefined;
    const { direct } = this.deps;
    if (!direct.usable()) return must ? this.hold(items, batch, stream) : undefined;
    // A relay batch goes on only as one: to a parent without a relay link (not a Strata parent) it is stored here.
    if (batch.relay && !direct.relayUsable()) return must ? Promise.reject(this.refusal(stream)) : undefined;
    if (!must && store.hasQueued('$upstream')) return undefined;
    let payload = batch.payload;
    if (known) {
      const origin: BatchOrigin = { stream: batch.stream, prev: first.prev, seqs: rest.map((it) => it.origin!.seq) };
      if (batch.relay) origin.senders = rest.map((it) => identityKey(it.auth.identity));
      payload = encodeBatchOf(
        rest.map((it) => it.message),
        origin,
      );
    }
    const passing = this.pass(st, rest, payload, batch.relay === true);
    if (!known) return passing;
    // The known ones are answered the way the store path answers them.
    return Promise.all([passing, this.deps.storeBatch(items.filter((it) => !rest.includes(it)))]).then(() => undefined);
  }

  private async pass(st: StreamState, rest: readonly ForwardItem[], payload: Buffer, relay: boolean): Promise<void> {
    const first = rest[0]!.origin!;
    const last = rest[rest.length - 1]!.origin!;
    const range: [number, number] = [first.seq, last.seq];
    st.inFlight++;
    addDoubt(st.doubt, range);
    let outcome;
    try {
      const t0 = tracing ? performance.now() : 0;
      await this.deps.store.markPassing(first.stream, last.seq);
      if (tracing) took('pass.mark', performance.now() - t0);
      outcome = relay
        ? await this.deps.direct.sendRelay(sendersOf(rest), payload)
        : await this.deps.direct.send(rest[0]!.auth.identity, payload);
    } catch (err) {
      // Nothing was sent: not in doubt.
      st.inFlight--;
      removeDoubt(st.doubt, range);
      if (err instanceof UpstreamError && (err.status === 401 || err.status === 403 || err.status === 404)) {
        // The parent refuses the sender itself: stored here, its pump drops them with the reason, logged and counted.
        return this.deps.storeBatch(rest);
      }
      st.failed.push(range);
      throw new EngineError(
        'unavailable',
        `the gateway could not pass the batch to its parent: ${(err as Error).message}`,
      );
    }
    st.inFlight--;
    if (tracingOrigins)
      traceOrigin('gw.passed', {
        ids: rest.map((it) => it.message.messageId),
        origins: rest.map((it) => it.origin),
        ok: outcome.ok,
      });
    if (outcome.ok) {
      removeDoubt(st.doubt, range);
      cover(st.passed, first.prev, last.seq);
      // Earlier attempts of what the parent now has are no longer in doubt, nor is what a
      // previous run may have passed on once the parent has everything up to its mark.
      if (st.doubt.length > 0) st.doubt = st.doubt.filter(([, hi]) => hi > st.passed.mark);
      if (st.before > 0 && st.passed.mark >= st.before) st.before = 0;
      this.deps.passed(rest.length);
      return;
    }
    // The parent's answer goes to the child as it came; the batch stays in doubt (a parent that
    // passes batches on itself may have handed it further before failing). The child sends it
    // again unless the refusal is one sending again cannot cure (then it drops the messages).
    if (!isPermanentForMessage(outcome)) st.failed.push(range);
    throw new EngineError(
      outcome.released ? 'unavailable' : engineCodeOfCondition(outcome.condition),
      `the parent did not take the batch: ${outcome.description}`,
    );
  }

  /**
   * A batch that can only go to the parent, which is unreachable: held a while (`holdMs`,
   * under the child's own patience), and passed on the moment the link is back; else refused with
   * 'parent-unreachable', which the child answers by sending it again a second later.
   */
  private async hold(items: readonly ForwardItem[], batch: ForwardedBatch, stream: string): Promise<void> {
    if (!(await this.deps.direct.whenUsable(this.deps.holdMs ?? HOLD_MS))) throw this.refusal(stream);
    // Where it goes now depends on what happened meanwhile.
    return this.forward(items, batch) ?? this.deps.storeBatch(items);
  }

  private overtaking(stream: string): EngineError {
    this.logRefusal(
      stream,
      'a child batch is refused: the one before it went to the parent and failed; the child sends both again, in order',
    );
    return new EngineError(
      'parent-unreachable',
      'the batch before this one did not reach the parent: send again from it, so that this one does not overtake it',
    );
  }

  private logRefusal(stream: string, msg: string): void {
    const now = Date.now();
    if (now - this.lastRefusalLog < REFUSAL_LOG_MS) return;
    this.lastRefusalLog = now;
    this.deps.log.warn({ stream }, msg);
  }

  private refusal(stream: string): EngineError {
    this.logRefusal(
      stream,
      'a child batch that went to the parent before without an answer is refused while the parent is unreachable; the child keeps it and sends it again',
    );
    return new EngineError(
      'parent-unreachable',
      'the parent is unreachable, and this stream has a batch that went to it before without an answer: keep it and send it again',
    );
  }

  private state(stream: string): StreamState {
    let st = this.streams.get(stream);
    if (!st) {
      st = {
        passed: { mark: 0, spans: [] },
        inFlight: 0,
        doubt: [],
        failed: [],
        before: this.deps.store.passingMarksAtOpen().get(stream) ?? 0,
        beforeChecked: false,
      };
      this.streams.set(stream, st);
    }
    return st;
  }
}

/** The distinct senders of `items`. */
function sendersOf(items: readonly ForwardItem[]): IdentityRef[] {
  const byKey = new Map<string, IdentityRef>();
  for (const it of items) {
    const key = identityKey(it.auth.identity);
    if (!byKey.has(key)) byKey.set(key, it.auth.identity);
  }
  return [...byKey.values()];
}

function addDoubt(doubt: Array<[number, number]>, range: [number, number]): void {
  doubt.push(range);
  if (doubt.length > MAX_DOUBT) {
    const [a, b] = doubt.splice(0, 2) as [[number, number], [number, number]];
    doubt.unshift([Math.min(a[0], b[0]), Math.max(a[1], b[1])]);
  }
}

function removeDoubt(doubt: Array<[number, number]>, range: [number, number]): void {
  const i = doubt.indexOf(range);
  if (i >= 0) doubt.splice(i, 1);
}
