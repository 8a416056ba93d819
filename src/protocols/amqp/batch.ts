import rhea, { type Message as AmqpMessage } from 'rhea';
import { identityOfKey, type IdentityRef } from '../../model/identity.ts';
import type { Message } from '../../model/message.ts';
import { AmqpWriter, encodeDataSections, SECTION, SYM32, textBound } from './encode-message.ts';

/**
 * IoT Hub's batched message: one AMQP transfer whose `message-format` is 0x80013700 and whose
 * body is a list of data sections, each holding one whole AMQP-encoded message. A gateway sends
 * its upstream telemetry this way, so one transfer, one disposition and one store commit carry
 * many messages instead of one each. The batch is accepted or refused as a whole.
 */

export const BATCH_FORMAT = 0x80013700;

/** IoT Hub's limit for one batch (encoded), the same as for a single message. */
export const MAX_BATCH_BYTES = 256 * 1024;

/**
 * Where the messages of a batch come from, when a Strata gateway forwards them from its store:
 * the stream (store id and queue), the store's number of each message and of the one sent
 * before the first. The parent uses them to store each message once (store/origin-watermarks.ts).
 */
export const ORIGIN_STREAM = 'x-opt-strata-stream';
export const ORIGIN_SEQS = 'x-opt-strata-seqs';
export const ORIGIN_PREV = 'x-opt-strata-prev';

/**
 * A relay batch (sent on a gateway's relay link, relay-link.ts) carries messages of many senders:
 * this annotation names the sender of each message (`device` or `device/module`), one a line.
 */
export const RELAY_SENDERS = 'x-opt-strata-senders';

export interface BatchOrigin {
  stream: string;
  prev: number;
  seqs: readonly number[];
  /** Relay batches only: each message's sender as an identity key (model/identity.ts). */
  senders?: readonly string[];
}

/** The transfer payload of a batch made of already encoded messages. */
export function encodeBatch(encoded: readonly Buffer[], origin?: BatchOrigin): Buffer {
  let size = 0;
  for (const e of encoded) size += 8 + e.length;
  const w = batchWriter(size, origin);
  for (const e of encoded) {
    w.section(SECTION.data);
    w.binary(e);
  }
  return w.buf.subarray(0, w.pos);
}

/** The transfer payload of a batch whose data sections are encoded already, back to back (DataSections). */
export function encodeBatchOfSections(sections: Buffer, origin?: BatchOrigin): Buffer {
  const w = batchWriter(sections.length, origin);
  sections.copy(w.buf, w.pos);
  w.pos += sections.length;
  return w.buf.subarray(0, w.pos);
}

/** One batch of `messages` naming `origin`, written into one buffer. */
export function encodeBatchOf(messages: readonly Message[], origin: BatchOrigin): Buffer {
  const head = batchHead(origin);
  const { buf, at } = encodeDataSections(messages, head.length);
  head.copy(buf, 0);
  return buf.subarray(0, at[messages.length]);
}

/**
 * The batch's head alone: its message-annotations section naming the origin. Written into room
 * left in front of the data sections, it makes them a batch without copying them.
 */
export function batchHead(origin: BatchOrigin): Buffer {
  const w = batchWriter(0, origin);
  return w.buf.subarray(0, w.pos);
}

/**
 * A writer holding the batch's origin annotations with room for `sections` bytes after them.
 * Written straight into one buffer: rhea's encoder grows (and zero-fills) its buffer step by
 * step, and a gateway encodes a batch of up to 256 KiB for every transfer it sends.
 */
function batchWriter(sections: number, origin: BatchOrigin | undefined): AmqpWriter {
  const annotations: Array<[string, string]> | undefined = origin && [
    [ORIGIN_STREAM, origin.stream],
    [ORIGIN_PREV, String(origin.prev)],
    [ORIGIN_SEQS, origin.seqs.join(',')],
  ];
  if (origin?.senders) annotations!.push([RELAY_SENDERS, origin.senders.join('\n')]);
  let bound = 16 + sections;
  if (annotations) for (const [k, v] of annotations) bound += textBound(k) + textBound(v);
  const w = new AmqpWriter(Buffer.allocUnsafe(bound));
  if (annotations) w.stringMap(SECTION.messageAnnotations, SYM32, annotations);
  return w;
}

/** The origin a batch names, or undefined when it names none or names it wrongly (then it is stored as is). */
export function originOfBatch(
  annotations: Record<string, unknown> | undefined,
  count: number,
): BatchOrigin | undefined {
  return readOrigin(annotations, count).origin;
}

/**
 * The origin a batch names; when it names one that does not fit, what is wrong with it (the
 * messages are then stored without exactly-once, and the receiver says so in its log: a child
 * that numbers its batches wrongly would otherwise duplicate messages silently).
 */
export function readOrigin(
  annotations: Record<string, unknown> | undefined,
  count: number,
): { origin?: BatchOrigin; problem?: string } {
  if (!annotations || annotations[ORIGIN_STREAM] === undefined) return {};
  const stream = annotations[ORIGIN_STREAM];
  const seqsText = annotations[ORIGIN_SEQS];
  const prevText = annotations[ORIGIN_PREV];
  const prev = Number(prevText);
  if (typeof stream !== 'string' || stream.length === 0 || stream.length > 256)
    return { problem: `${ORIGIN_STREAM} must be a string of 1 to 256 characters` };
  if (typeof seqsText !== 'string') return { problem: `${ORIGIN_SEQS} is missing` };
  if (!Number.isSafeInteger(prev) || prev < 0)
    return { problem: `${ORIGIN_PREV} "${String(prevText).slice(0, 40)}" is not a whole number >= 0` };
  const seqs = seqsText.split(',').map(Number);
  if (seqs.length !== count) return { problem: `${ORIGIN_SEQS} names ${seqs.length} numbers for ${count} messages` };
  let last = prev;
  for (const n of seqs) {
    if (!Number.isSafeInteger(n) || n <= last)
      return {
        problem: `${ORIGIN_SEQS} must rise above ${ORIGIN_PREV} (${prev}) one message at a time; found ${String(n).slice(0, 20)} after ${last}`,
      };
    last = n;
  }
  return { origin: { stream, prev, seqs } };
}

/**
 * The senders a relay batch names, one per message; `problem` when they are missing or do not
 * fit (the batch is then refused: a relay batch cannot be stored without knowing whose it is).
 */
export function readRelaySenders(
  annotations: Record<string, unknown> | undefined,
  count: number,
): { senders?: IdentityRef[]; problem?: string } {
  const text = annotations?.[RELAY_SENDERS];
  if (typeof text !== 'string') return { problem: `a relay batch must name its senders (${RELAY_SENDERS})` };
  const keys = text.split('\n');
  if (keys.length !== count) return { problem: `${RELAY_SENDERS} names ${keys.length} senders for ${count} messages` };
  const known = new Map<string, IdentityRef>();
  const senders: IdentityRef[] = [];
  for (const key of keys) {
    let id = known.get(key);
    if (!id) {
      id = identityOfKey(key);
      if (!id) return { problem: `${RELAY_SENDERS} names "${key.slice(0, 60)}", which is not a device or module id` };
      known.set(key, id);
    }
    senders.push(id);
  }
  return { senders };
}

export class BatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BatchError';
  }
}

/**
 * The messages inside a received batch. rhea decodes only transfers of format 0, so a batch
 * arrives as its raw payload; an already decoded one is taken too.
 */
export function messagesOfBatch(batch: Buffer | AmqpMessage): AmqpMessage[] {
  return readBatch(batch).messages;
}

/** The messages of a batch and the batch's own message annotations. */
export function readBatch(batch: Buffer | AmqpMessage): {
  messages: AmqpMessage[];
  annotations: Record<string, unknown> | undefined;
} {
  let outer: AmqpMessage;
  try {
    outer = Buffer.isBuffer(batch) ? (rhea.message.decode(batch) as unknown as AmqpMessage) : batch;
  } catch (err) {
    throw new BatchError(`the batch cannot be decoded: ${(err as Error).message}`);
  }
  const body = outer.body as { typecode?: number; content?: unknown; multiple?: boolean } | undefined;
  if (body?.typecode !== 0x75)
    throw new BatchError('a batched message (format 0x80013700) must have a body of data sections');
  const parts = (body.multiple ? body.content : [body.content]) as unknown[];
  const messages = parts.map((part, i) => {
    if (!Buffer.isBuffer(part)) throw new BatchError(`section ${i} of the batch is not binary data`);
    try {
      return rhea.message.decode(part) as unknown as AmqpMessage;
    } catch (err) {
      throw new BatchError(`message ${i} of the batch cannot be decoded: ${(err as Error).message}`);
    }
  });
  return { messages, annotations: outer.message_annotations as Record<string, unknown> | undefined };
}
