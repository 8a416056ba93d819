/**
 * The MQTT head's parse cost per packet: mqtt-packet's parser (set up as the connection had it:
 * a plain BufferList, shared state names) against the PacketReader the connection uses once a
 * client is connected. QoS 1 PUBLISHes of 256 B to a telemetry topic with properties, cut the way
 * they arrive: one packet per read (a leaf at a low rate) and 16 KiB TLS records (a busy leaf).
 *
 *   node --import tsx bench/mqtt-parse.ts [--packets 20000] [--size 256] [--rounds 9]
 */
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt-packet';
import { PacketReader, type ReadPacket } from '../src/protocols/mqtt/packet-reader.ts';
import { median } from './common.ts';

const { values: args } = parseArgs({
  options: {
    packets: { type: 'string', default: '20000' },
    size: { type: 'string', default: '256' },
    rounds: { type: 'string', default: '9' },
  },
});
const PACKETS = Number(args.packets);
const SIZE = Number(args.size);
const ROUNDS = Number(args.rounds);

const { BufferList } = createRequire(createRequire(import.meta.url).resolve('mqtt-packet'))('bl') as {
  BufferList: new () => unknown;
};

function stream(): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; i < PACKETS; i++) {
    out.push(
      mqtt.generate({
        cmd: 'publish',
        topic: `devices/leaf-${String(i % 100).padStart(3, '0')}/messages/events/%24.mid=${i}&%24.ct=application%2Fjson&%24.ce=utf-8&seq=${i}`,
        payload: Buffer.alloc(SIZE, i & 255),
        qos: 1,
        dup: false,
        retain: false,
        messageId: 1 + (i % 65535),
      }),
    );
  }
  return Buffer.concat(out);
}

/** Cuts into one packet per chunk, or into records of `record` bytes whatever the packet bounds. */
function chunks(bytes: Buffer, record: number | 'packet'): Buffer[] {
  const out: Buffer[] = [];
  if (record === 'packet') {
    const parser = mqtt.parser({ protocolVersion: 4 });
    let at = 0;
    parser.on('packet', (p) => {
      // Fixed header of a PUBLISH under 16 KiB: one type byte and a one- or two-byte length.
      const len = (p as { length: number }).length;
      const head = len < 128 ? 2 : 3;
      out.push(Buffer.from(bytes.subarray(at, at + head + len)));
      at += head + len;
    });
    parser.parse(bytes);
    return out;
  }
  for (let at = 0; at < bytes.length; at += record) out.push(Buffer.from(bytes.subarray(at, at + record)));
  return out;
}

let seen = 0;
let checksum = 0;
function onPacket(p: { messageId?: number; topic: string | null; payload: Buffer | null }): void {
  seen++;
  checksum = (checksum + (p.messageId ?? 0) + (p.topic?.length ?? 0) + (p.payload?.length ?? 0)) | 0;
}

function viaMqttPacket(input: Buffer[]): number {
  const parser = mqtt.parser({ protocolVersion: 4 });
  (parser as unknown as { _list: unknown })._list = new BufferList();
  parser.on('packet', onPacket as never);
  parser.on('error', (err) => {
    throw err;
  });
  const t0 = process.hrtime.bigint();
  for (const c of input) parser.parse(c);
  return Number(process.hrtime.bigint() - t0);
}

function viaReader(input: Buffer[]): number {
  const reader = new PacketReader(
    {
      closed: false,
      packet: onPacket as (p: ReadPacket) => void,
      frame: () => {
        throw new Error('unexpected frame');
      },
      malformed: (err) => {
        throw err;
      },
      tooLarge: () => {
        throw new Error('too large');
      },
    },
    512 * 1024,
  );
  const t0 = process.hrtime.bigint();
  for (const c of input) reader.feed(c);
  return Number(process.hrtime.bigint() - t0);
}

const bytes = stream();
const results: Record<string, unknown>[] = [];
for (const cut of ['packet', 16384] as const) {
  const input = chunks(bytes, cut);
  const old: number[] = [];
  const now: number[] = [];
  // Warm both up, then alternate so drift in the machine's load hits both alike.
  viaMqttPacket(input);
  viaReader(input);
  for (let r = 0; r < ROUNDS; r++) {
    seen = 0;
    old.push(viaMqttPacket(input) / PACKETS);
    if (seen !== PACKETS) throw new Error(`mqtt-packet gave ${seen} packets`);
    seen = 0;
    now.push(viaReader(input) / PACKETS);
    if (seen !== PACKETS) throw new Error(`the reader gave ${seen} packets`);
  }
  const o = median(old);
  const n = median(now);
  results.push({
    chunks: cut === 'packet' ? 'one packet per read' : '16 KiB records',
    reads: input.length,
    mqtt_packet_ns_per_packet: Math.round(o),
    reader_ns_per_packet: Math.round(n),
    speedup: Number((o / n).toFixed(1)),
  });
}
console.log(JSON.stringify({ bench: 'mqtt parse', packets: PACKETS, size: SIZE, rounds: ROUNDS, results, checksum }));
