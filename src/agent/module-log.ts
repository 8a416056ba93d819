import fs from 'node:fs';

/**
 * A process module's output file: the child writes its stdout and stderr straight into it (an
 * O_APPEND descriptor, so the module keeps logging while no agent runs), and the agent keeps it
 * under a size cap by copying it to `PATH.1` and truncating it (one rotation). Lines written
 * between the copy and the truncation are lost; that is the price of not piping through the agent.
 */

/** Longest line handed out; a module printing megabytes without a newline is cut into pieces. */
const MAX_LINE_BYTES = 64 * 1024;

export function rotatedPath(path: string): string {
  return `${path}.1`;
}

/** Rotates `path` when it has grown past `maxBytes`. Returns true when it did. */
export function rotateIfOver(path: string, maxBytes: number): boolean {
  let size: number;
  try {
    size = fs.statSync(path).size;
  } catch {
    return false;
  }
  if (size <= maxBytes) return false;
  fs.copyFileSync(path, rotatedPath(path));
  fs.truncateSync(path, 0);
  return true;
}

function readOr(path: string): Buffer {
  try {
    return fs.readFileSync(path);
  } catch {
    return Buffer.alloc(0);
  }
}

/** Splits complete lines off `buf`; returns them and the bytes of an unfinished last line. */
export function splitLines(buf: Buffer): { lines: string[]; rest: Buffer } {
  const lines: string[] = [];
  let start = 0;
  for (;;) {
    const nl = buf.indexOf(0x0a, start);
    if (nl < 0) break;
    lines.push(buf.subarray(start, nl).toString('utf8').replace(/\r$/, ''));
    start = nl + 1;
  }
  let rest = buf.subarray(start);
  while (rest.length > MAX_LINE_BYTES) {
    lines.push(rest.subarray(0, MAX_LINE_BYTES).toString('utf8'));
    rest = rest.subarray(MAX_LINE_BYTES);
  }
  return { lines, rest };
}

export interface ReadLinesOptions {
  tail?: number;
  follow?: boolean;
  signal?: AbortSignal;
  /** How often a follower looks for new output. */
  pollMs?: number;
}

/** The kept lines of `path` (the rotated file first), then, when following, new ones as they come. */
export async function* readLogLines(path: string, opts: ReadLinesOptions = {}): AsyncGenerator<string> {
  const { signal } = opts;
  const current = readOr(path);
  const older = opts.tail === 0 ? Buffer.alloc(0) : readOr(rotatedPath(path));
  const { lines, rest } = splitLines(Buffer.concat([older, current]));
  // An unfinished last line is shown now unless following, where it is shown once complete.
  if (!opts.follow && rest.length > 0) lines.push(rest.toString('utf8'));
  const tail = opts.tail === undefined ? lines : opts.tail <= 0 ? [] : lines.slice(-opts.tail);
  for (const line of tail) {
    if (signal?.aborted) return;
    yield line;
  }
  if (!opts.follow) return;

  let pos = current.length;
  let pending: Buffer = Buffer.from(rest);
  const pollMs = opts.pollMs ?? 200;
  while (!signal?.aborted) {
    await sleep(pollMs, signal);
    if (signal?.aborted) return;
    let size: number;
    try {
      size = fs.statSync(path).size;
    } catch {
      return; // the module was removed
    }
    const chunks: Buffer[] = [];
    if (size < pos) {
      // Rotated since the last look: what followed `pos` went to the rotated copy.
      const old = readOr(rotatedPath(path));
      if (old.length > pos) chunks.push(old.subarray(pos));
      pos = 0;
    }
    if (size > pos) {
      chunks.push(readRange(path, pos, size));
      pos = size;
    }
    if (chunks.length === 0) continue;
    const split = splitLines(Buffer.concat([pending, ...chunks]));
    pending = Buffer.from(split.rest);
    for (const line of split.lines) {
      if (signal?.aborted) return;
      yield line;
    }
  }
}

function readRange(path: string, from: number, to: number): Buffer {
  const fd = fs.openSync(path, 'r');
  try {
    const buf = Buffer.alloc(to - from);
    const n = fs.readSync(fd, buf, 0, buf.length, from);
    return buf.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
