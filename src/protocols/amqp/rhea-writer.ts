import { createRequire } from 'node:module';

/**
 * rhea writes every frame through a small buffer that it grows to fit the payload, allocating
 * each larger buffer zero-filled and copying the whole old one. For a gateway's batches (tens to
 * hundreds of KiB a transfer) that zero-filling and copying was a few percent of a relaying
 * gateway's time. Growing here allocates without zero-filling and copies only the bytes written:
 * a writer only ever hands out the bytes it wrote (up to its position), so nothing unwritten
 * leaves the process. Imported for this effect by the modules that open AMQP connections.
 */
interface RheaWriter {
  buffer: Buffer;
  position: number;
}

const require = createRequire(import.meta.url);
const types = require('rhea/lib/types.js') as { Writer: { prototype: { ensure(this: RheaWriter, length: number): void } } };

types.Writer.prototype.ensure = function ensure(this: RheaWriter, length: number): void {
  if (this.buffer.length >= length) return;
  const bigger = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, length));
  this.buffer.copy(bigger, 0, 0, this.position);
  this.buffer = bigger;
};
