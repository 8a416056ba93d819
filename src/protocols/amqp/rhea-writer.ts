import './rhea-links.ts';
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
 *
 * A third: rhea writes each frame to the socket the moment it encodes it (and resets its
 * heartbeat timer each time). Over TLS each write is a record and a system call, which below
 * saturation, one message per frame, was the largest part of a relaying layer's cost. Frames
 * encoded in one run of rhea's processing (transfers of several links, their dispositions and
 * flows) now go out together at the end of it, corked into one write.
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
  /** The frame's bytes, made when it was encoded (a frame waiting for the end of a batch). */
  bytes?: Buffer;
}

interface RheaTransport {
  header_sent: unknown;
  pending: Frame[];
  identifier: string;
}

interface Socket {
  write(b: Buffer): unknown;
  cork?(): void;
  uncork?(): void;
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

interface RheaConnection {
  amqp_transport: { encode(frame: unknown): void; pending: Frame[] };
  output(): void;
  [BATCHING]?: number;
  [OUTPUT_DUE]?: boolean;
}
const BATCHING = Symbol('strata.batching');
const OUTPUT_DUE = Symbol('strata.outputDue');
const connection = require('rhea/lib/connection.js') as {
  prototype: {
    _write_frame(this: RheaConnection, channel?: number, frame?: unknown, payload?: Buffer): void;
    _process(this: RheaConnection): void;
  };
};
const amqpFrame = (frames as unknown as { amqp_frame(c?: number, f?: unknown, p?: Buffer): Frame }).amqp_frame;

// Inside one run of rhea's processing (sessions' transfers, dispositions, flows, open and
// close), frames are encoded and written out together at its end; elsewhere at once, as rhea does.
connection.prototype._write_frame = function writeFrame(this: RheaConnection, channel, frame, payload): void {
  const f = amqpFrame(channel, frame, payload);
  if (!this[BATCHING]) {
    this.amqp_transport.encode(f);
    this.output();
    return;
  }
  // Made into bytes now: rhea changes some performatives once written (a close's error is
  // cleared right after), and these are written later. A large payload is not copied here.
  this.amqp_transport.encode(isLarge(f) ? f : { channel: f.channel, type: f.type, bytes: frames.write_frame(f) });
  this[OUTPUT_DUE] = true;
};

const processFrames = connection.prototype._process;
connection.prototype._process = function processBatched(this: RheaConnection): void {
  this[BATCHING] = (this[BATCHING] ?? 0) + 1;
  try {
    processFrames.call(this);
  } finally {
    this[BATCHING]! -= 1;
    if (this[BATCHING] === 0 && this[OUTPUT_DUE]) {
      this[OUTPUT_DUE] = false;
      this.output();
    }
  }
};

types.Writer.prototype.ensure = function ensure(this: RheaWriter, length: number): void {
  if (this.buffer.length >= length) return;
  const bigger = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, length));
  this.buffer.copy(bigger, 0, 0, this.position);
  this.buffer = bigger;
};

const writeFrames = transport.prototype.write;
transport.prototype.write = function write(this: RheaTransport, socket: Socket): void {
  if (this.pending.length < 2 || !socket.cork || !socket.uncork) return writeOut.call(this, socket);
  socket.cork();
  try {
    writeOut.call(this, socket);
  } finally {
    socket.uncork();
  }
};

function writeOut(this: RheaTransport, socket: Socket): void {
  if (!this.header_sent) {
    // The protocol header first, as rhea writes it.
    const queued = this.pending;
    this.pending = [];
    writeFrames.call(this, socket);
    this.pending = queued;
  }
  // Frames rhea would write as they are: as rhea does.
  if (!this.pending.some((f) => f.bytes || isLarge(f))) return writeFrames.call(this, socket);
  const pending = this.pending;
  this.pending = [];
  for (const frame of pending) {
    if (frame.bytes) {
      socket.write(frame.bytes);
      continue;
    }
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
}

function isLarge(frame: Frame): boolean {
  return (
    frame.performative !== undefined && frame.payload !== undefined && frame.payload.length >= SEPARATE_PAYLOAD_BYTES
  );
}
