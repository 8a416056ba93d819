/**
 * The byte streams the Docker Engine API returns, made into lines. A container without a TTY has
 * its stdout and stderr multiplexed into frames (an 8-byte header: stream type, three zero bytes,
 * a big-endian payload length); one with a TTY sends raw bytes. Events arrive as JSON lines.
 */

const HEADER_BYTES = 8;

/** One frame's payload and its stream (1 stdout, 2 stderr). */
export interface Frame {
  stream: number;
  payload: Buffer;
}

/** Takes chunks of a multiplexed stream, in any cut, and returns the frames in order. */
export class FrameDemuxer {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: Frame[] = [];
    while (this.pending.length >= HEADER_BYTES) {
      const size = this.pending.readUInt32BE(4);
      if (this.pending.length < HEADER_BYTES + size) break;
      out.push({ stream: this.pending[0] ?? 1, payload: this.pending.subarray(HEADER_BYTES, HEADER_BYTES + size) });
      this.pending = this.pending.subarray(HEADER_BYTES + size);
    }
    return out;
  }
}

/** Splits text into lines across chunk boundaries; `end` returns the unterminated rest. */
export class LineSplitter {
  private rest = '';
  private readonly decoder = new TextDecoder('utf-8');

  push(chunk: Buffer): string[] {
    const text = this.rest + this.decoder.decode(chunk, { stream: true });
    const lines = text.split('\n');
    this.rest = lines.pop() ?? '';
    return lines.map(stripCr);
  }

  end(): string[] {
    const last = this.rest + this.decoder.decode();
    this.rest = '';
    return last.length > 0 ? [stripCr(last)] : [];
  }
}

const stripCr = (line: string): string => (line.endsWith('\r') ? line.slice(0, -1) : line);

/**
 * Lines of a container's output: `multiplexed` unless the container has a TTY. stdout and stderr
 * are split apart, so a line half written to one is not glued to a line of the other.
 */
export class LogLines {
  private readonly demux: FrameDemuxer | undefined;
  private readonly splitters = new Map<number, LineSplitter>();

  constructor(multiplexed: boolean) {
    this.demux = multiplexed ? new FrameDemuxer() : undefined;
  }

  push(chunk: Buffer): string[] {
    if (!this.demux) return this.splitter(1).push(chunk);
    return this.demux.push(chunk).flatMap((f) => this.splitter(f.stream).push(f.payload));
  }

  end(): string[] {
    return [...this.splitters.values()].flatMap((s) => s.end());
  }

  private splitter(stream: number): LineSplitter {
    let s = this.splitters.get(stream);
    if (!s) {
      s = new LineSplitter();
      this.splitters.set(stream, s);
    }
    return s;
  }
}
