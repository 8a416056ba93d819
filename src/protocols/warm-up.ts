import type { Message } from '../model/message.ts';
import type { WarmUpResult } from '../util/warm-up.ts';
import { type BatchOrigin, batchHead, readOrigin, readRelaySenders } from './amqp/batch.ts';
import { decodeBatch } from './amqp/decode-message.ts';
import { encodeDataSections } from './amqp/encode-message.ts';
import { PacketReader, type PacketSink, type ReadPacket } from './mqtt/packet-reader.ts';
import { decodeBag, parsePublishTopic } from './mqtt/topics.ts';

/**
 * Runs the codecs every telemetry message goes through (an MQTT PUBLISH read and its topic and
 * property bag decoded; a batch encoded as a gateway sends it upstream and decoded as its parent
 * reads it) over made-up messages, in memory, for a moment at start. V8 compiles a function
 * well only after it has run a while: cold, the first few thousand messages cost each of these
 * steps 10 to 30 times what they cost a second later, and through a chain of gateways that
 * start-up cost became most of a run's p99. Pure computation: no file, socket, timer or session
 * is touched, and nothing outlives the call but the compiled code. The hub and each gateway run
 * it before they listen (util/warm-up.ts: STRATA_NO_WARM_UP=1 skips it).
 */

export interface WarmUpOptions {
  /** Stop after this long, whatever is left (default 300 ms). */
  budgetMs?: number;
  /** Batches of made-up messages to run at most (default 40). */
  rounds?: number;
}

/** Messages per round: a batch of the size a gateway sends at a few thousand messages a second. */
const PER_ROUND = 250;
/** Made-up senders per round (a relay batch names one per message). */
const SENDERS = 25;

export function warmUpMessagePath(o: WarmUpOptions = {}): WarmUpResult {
  const budgetMs = o.budgetMs ?? 300;
  const maxRounds = o.rounds ?? 40;
  const t0 = performance.now();
  let rounds = 0;
  let prev = 0;
  while (rounds < maxRounds && performance.now() - t0 < budgetMs) {
    const messages = readPublishes(publishFrames(rounds));
    const seqs = messages.map((_, i) => prev + i + 1);
    const origin: BatchOrigin = {
      stream: 'warm-up/0',
      prev,
      seqs,
      senders: messages.map((_, i) => `warm-up-${i % SENDERS}`),
    };
    readBack(encodeRelayBatch(messages, origin), messages);
    prev = seqs[seqs.length - 1]!;
    rounds++;
  }
  return { rounds, messages: rounds * PER_ROUND, ms: performance.now() - t0 };
}

/** QoS 1 PUBLISHes to telemetry topics with a property bag, as the device SDKs send them, in one buffer. */
function publishFrames(round: number): Buffer {
  const frames: Buffer[] = [];
  for (let i = 0; i < PER_ROUND; i++) {
    const topic = Buffer.from(
      `devices/warm-up-${i % SENDERS}/messages/events/$.mid=m${round}-${i}&$.ct=application%2Fjson&$.ce=utf-8&seq=${i}`,
    );
    const payload = Buffer.alloc(256, i & 0xff);
    payload.writeBigUInt64BE(BigInt(round * PER_ROUND + i), 0);
    const rest = 2 + topic.length + 2 + payload.length;
    const len = rest < 128 ? [rest] : [(rest & 0x7f) | 0x80, rest >> 7];
    const frame = Buffer.alloc(1 + len.length + rest);
    let at = 0;
    frame[at++] = 0x32; // PUBLISH, QoS 1
    for (const b of len) frame[at++] = b;
    at = frame.writeUInt16BE(topic.length, at);
    at += topic.copy(frame, at);
    at = frame.writeUInt16BE((i % 65535) + 1, at);
    payload.copy(frame, at);
    frames.push(frame);
  }
  return Buffer.concat(frames);
}

/** Reads the PUBLISHes as the MQTT head does (in two reads cut inside a packet) into messages. */
function readPublishes(bytes: Buffer): Message[] {
  const messages: Message[] = [];
  const sink: PacketSink = {
    closed: false,
    packet: (p: ReadPacket) => {
      const target = parsePublishTopic(p.topic!);
      if (target.kind !== 'telemetry') throw new Error(`warm-up: ${p.topic} read as ${target.kind}`);
      messages.push(decodeBag(target.bag, p.payload!));
    },
    frame: () => {
      throw new Error('warm-up: a PUBLISH was read as another packet');
    },
    malformed: (err) => {
      throw err;
    },
    tooLarge: (length) => {
      throw new Error(`warm-up: a packet of ${length} bytes read as too large`);
    },
  };
  const reader = new PacketReader(sink, 1 << 20);
  const cut = Math.floor(bytes.length / 2) + 3;
  reader.feed(bytes.subarray(0, cut));
  reader.feed(bytes.subarray(cut));
  if (messages.length !== PER_ROUND) throw new Error(`warm-up: read ${messages.length} of ${PER_ROUND} PUBLISHes`);
  return messages;
}

/** A relay batch as the upstream link writes it: the data sections with the batch head in front. */
function encodeRelayBatch(messages: readonly Message[], origin: BatchOrigin): Buffer {
  const head = batchHead(origin);
  const { buf, at } = encodeDataSections(messages, head.length);
  head.copy(buf, 0);
  return buf.subarray(0, at[messages.length]);
}

/** Decodes the batch as a parent does and checks it came back whole (a warm-up that warmed nothing would say so). */
function readBack(payload: Buffer, sent: readonly Message[]): void {
  const { messages, annotations } = decodeBatch(payload);
  const { origin, problem } = readOrigin(annotations, messages.length);
  const { senders, problem: sendersProblem } = readRelaySenders(annotations, messages.length);
  const last = messages[messages.length - 1];
  const want = sent[sent.length - 1]!;
  if (
    problem !== undefined ||
    sendersProblem !== undefined ||
    origin === undefined ||
    senders === undefined ||
    messages.length !== sent.length ||
    last?.messageId !== want.messageId ||
    !last.body.equals(want.body)
  )
    throw new Error(
      `warm-up: the batch did not read back as written (${problem ?? sendersProblem ?? 'messages differ'})`,
    );
}
