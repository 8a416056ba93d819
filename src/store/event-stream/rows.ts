import { expandAuthMethod } from '../../identity/auth-method.ts';
import { decodeMessageMeta } from '../../model/message-codec.ts';
import type { EventToAppend, StoredEvent, StoredEventInfo } from '../../model/events.ts';
import type { StatementCache } from './schema.ts';

/** An event's row and its other forms, and the two calculations the stream's numbering rests on. */

export interface Row {
  seq: number;
  part: number;
  pseq: number;
  off: number;
  enq: number;
  dev: string;
  mod: string | null;
  auth: string;
  gen: string | null;
  src: string;
  props: string;
  body: Buffer;
}

/** FNV-1a over the UTF-8 bytes of the device id: stable across restarts and processes. */
export function partitionOf(deviceId: string, partitions: number): number {
  let h = 0x811c9dc5;
  const bytes = Buffer.from(deviceId, 'utf8');
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % partitions;
}

export interface Keyed {
  key: number;
  enq: number;
}

/**
 * The first key in [lo, hi) whose row's enqueued time is `reached`, by bisection: enqueued times
 * never decrease along the sequence (one time per commit, never earlier than the one before),
 * so no index on the time is needed. `at(k)` is the first row with a key >= k; keys may have gaps.
 */
export function firstReaching(
  lo: number,
  hi: number,
  at: (key: number) => Keyed | undefined,
  reached: (enq: number) => boolean,
): number | undefined {
  let best: number | undefined;
  while (lo < hi) {
    const mid = lo + Math.floor((hi - lo) / 2);
    const row = at(mid);
    if (!row || row.key >= hi) {
      hi = mid;
    } else if (reached(row.enq)) {
      best = row.key;
      hi = mid;
    } else {
      lo = row.key + 1;
    }
  }
  return best;
}

export function rowToEvent(r: Row): StoredEvent {
  const e: StoredEvent = {
    sequenceNumber: r.seq,
    partition: r.part,
    partitionSequenceNumber: r.pseq,
    offset: r.off,
    enqueuedTime: r.enq,
    deviceId: r.dev,
    authMethod: expandAuthMethod(r.auth),
    messageSource: r.src,
    message: decodeMessageMeta(r.props, r.body),
  };
  if (r.mod !== null) e.moduleId = r.mod;
  if (r.gen !== null) e.authGenerationId = r.gen;
  return e;
}

export function toStoredEvent(e: EventToAppend, info: StoredEventInfo): StoredEvent {
  // Fields named one by one (no spread): this runs for every event appended.
  const out: StoredEvent = {
    sequenceNumber: info.sequenceNumber,
    partition: info.partition,
    partitionSequenceNumber: info.partitionSequenceNumber,
    offset: info.offset,
    enqueuedTime: info.enqueuedTime,
    deviceId: e.deviceId,
    authMethod: e.authMethod,
    messageSource: e.messageSource,
    message: e.message,
  };
  if (e.moduleId !== undefined) out.moduleId = e.moduleId;
  if (e.authGenerationId !== undefined) out.authGenerationId = e.authGenerationId;
  return out;
}

/** The first sequence number in [lo, hi) whose enqueued time is `reached` (see firstReaching). */
export function firstSeqReaching(
  stmts: StatementCache,
  lo: number,
  hi: number,
  reached: (enq: number) => boolean,
): number | undefined {
  const at = stmts.get('SELECT seq AS key, enq FROM events WHERE seq >= ? ORDER BY seq LIMIT 1');
  return firstReaching(lo, hi, (k) => at.get(k) as Keyed | undefined, reached);
}
