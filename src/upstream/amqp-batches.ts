import type { Message } from '../model/message.ts';
import {
  BATCH_FORMAT,
  batchHead,
  encodeBatchOfSections,
  MAX_BATCH_BYTES,
  type BatchOrigin,
} from '../protocols/amqp/batch.ts';
import { DATA_HEADER, encodeDataSections } from '../protocols/amqp/encode-message.ts';
import type { OutLink } from './amqp-links.ts';
import { isPermanentForMessage, type SendOutcome } from './errors.ts';

/**
 * Sends messages in order on one identity's telemetry link; one outcome per message. Several
 * messages go as IoT Hub batches (one transfer each, up to the batch size limit); a batch
 * refused for something one of its messages did wrong is sent again one message at a time, so
 * only that message is refused. With `origin` (messages from the gateway's store: their stream,
 * numbers and the number sent before them), every batch names it, so the parent stores each
 * message once even when it is sent again. A relay batch (`origin.senders`, on the gateway's
 * relay link) is only ever sent as a batch: a message sent alone goes as a batch of one.
 */
export async function sendInBatches(
  link: OutLink,
  messages: readonly Message[],
  origin?: BatchOrigin,
): Promise<SendOutcome[]> {
  // All messages encoded once into one buffer of data sections: a batch is a slice of it,
  // a message sent alone the slice of its section. When they all fit in one batch (the
  // usual case) its head goes into room left in front, so the batch is never copied.
  const head = origin && batchHead(origin);
  const { buf, at } = encodeDataSections(messages, head?.length ?? 0);
  const relay = origin?.senders !== undefined;
  // Alone, a message goes as itself; on the relay link as a batch of one, which names its sender.
  const one = (i: number) =>
    relay
      ? link.sendEncoded(
          encodeBatchOfSections(buf.subarray(at[i], at[i + 1]), originOf(origin!, i, i + 1)),
          BATCH_FORMAT,
        )
      : link.sendEncoded(buf.subarray(at[i]! + DATA_HEADER, at[i + 1]), 0);
  if (messages.length === 1 && !origin) return [await one(0)];
  const runs = runsOf(at, origin?.senders);
  if (runs.length === 1) {
    head?.copy(buf, 0);
    const o = await link.sendEncoded(buf.subarray(0, at[messages.length]), BATCH_FORMAT);
    if (!isPermanentForMessage(o)) return messages.map(() => o);
    return Promise.all(messages.map((_, i) => one(i)));
  }
  const outcomes = await Promise.all(
    runs.map(async ([from, to]) => {
      if (!origin && to - from === 1) return [await one(from)];
      const o = await link.sendEncoded(
        encodeBatchOfSections(buf.subarray(at[from], at[to]), origin && originOf(origin, from, to)),
        BATCH_FORMAT,
      );
      const count = to - from;
      if (!isPermanentForMessage(o)) return Array.from({ length: count }, () => o);
      return Promise.all(Array.from({ length: count }, (_, k) => one(from + k)));
    }),
  );
  return outcomes.flat();
}

/** The part of `origin` that messages [from, to) name: they follow the message before them. */
function originOf(origin: BatchOrigin, from: number, to: number): BatchOrigin {
  const prev = from === 0 ? origin.prev : origin.seqs[from - 1]!;
  const part: BatchOrigin = { stream: origin.stream, prev, seqs: origin.seqs.slice(from, to) };
  if (origin.senders) part.senders = origin.senders.slice(from, to);
  return part;
}

/** Room for the batch's own framing (and origin annotations) inside the size limit. */
const BATCH_OVERHEAD = 1024;

/** [from, to) index ranges of consecutive encoded messages, each run within IoT Hub's batch size limit. */
function runsOf(at: readonly number[], senders?: readonly string[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const count = at.length - 1;
  let from = 0;
  let bytes = BATCH_OVERHEAD;
  for (let i = 0; i < count; i++) {
    // The data section as encoded, plus the message's number in the origin list (up to 17) and
    // its sender's key in a relay batch (in UTF-8, up to 4 bytes a character).
    const size = at[i + 1]! - at[i]! + 17 + (senders ? 4 * senders[i]!.length + 1 : 0);
    if (i > from && bytes + size > MAX_BATCH_BYTES) {
      out.push([from, i]);
      from = i;
      bytes = BATCH_OVERHEAD;
    }
    bytes += size;
  }
  if (count > from) out.push([from, count]);
  return out;
}
