import { createRequire } from 'node:module';

/**
 * Two changes to how rhea writes frames, both for a gateway's batches (tens to hundreds of KiB a
 * transfer). Imported for this effect by the modules that open AMQP connections.
 *
 * rhea writes every frame through a small buffer that it grows to fit the payload, allocating
 * each larger buffer zero-filled and copying the whole old one. Growing here allocates without
 * zero-filling and copies only the bytes written: a writer only ever hands out the bytes it
 * wrote (up to its position), so nothing unwritten leaves the process.
 *
 * And a transfer's payload is not copied into the frame at all once it is large: the frame's
 * head (size, channel, performative) goes to the socket, then the payload as it is. The peer
 * reads the same bytes; the copy (and a fresh buffer of the payload's size, every transfer)
 * was a few percent of a relaying gateway's time. rhea never changes a payload once handed to
 * its transport, and the socket keeps the buffer until written.
 */
interface RheaWriter {
  buffer: Buffer;
  position: number;
}

interface Frame {
  channel: number;
  type: number;
  performative?: unknown;
  payload?: Buffer;
}

interface RheaTransport {
  header_sent: unknown;
  pending: Frame[];
  identifier: string;
}

interface Socket {
  write(b: Buffer): unknown;
}

/** Below this a payload is copied into its frame: two socket writes cost more than the copy. */
export const SEPARATE_PAYLOAD_BYTES = 16 * 1024;

const require = createRequire(import.meta.url);
const types = require('rhea/lib/types.js') as {
  Writer: { prototype: { ensure(this: RheaWriter, length: number): void } };
};
const frames = require('rhea/lib/frames.js') as { write_frame(f: Frame): Buffer };
const transport = require('rhea/lib/transport.js') as {
  prototype: { write(this: RheaTransport, socket: Socket): void };
};

types.Writer.prototype.ensure = function ensure(this: RheaWriter, length: number): void {
  if (this.buffer.length >= length) return;
  const bigger = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, length));
  this.buffer.copy(bigger, 0, 0, this.position);
  this.buffer = bigger;
};

const writeFrames = transport.prototype.write;
transport.prototype.write = function write(this: RheaTransport, socket: Socket): void {
  // The protocol header (the first write) and frames without a large payload: as rhea does.
  if (!this.header_sent || !this.pending.some(isLarge)) return writeFrames.call(this, socket);
  const pending = this.pending;
  this.pending = [];
  for (const frame of pending) {
    if (!isLarge(frame)) {
      socket.write(frames.write_frame(frame));
      continue;
    }
    const payload = frame.payload!;
    const head = frames.write_frame({ channel: frame.channel, type: frame.type, performative: frame.performative });
    head.writeUInt32BE(head.length + payload.length, 0);
    socket.write(head);
    socket.write(payload);
  }
};

function isLarge(frame: Frame): boolean {
  return (
    frame.performative !== undefined && frame.payload !== undefined && frame.payload.length >= SEPARATE_PAYLOAD_BYTES
  );
}
