import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A diagnostic for exactly-once across the hierarchy: with STRATA_ORIGIN_TRACE set to a
 * directory, every node appends one JSON line per telemetry decision (stored, passed on, sent
 * up, recognised as a resend) with the message ids and origins involved to DIR/<pid>.jsonl, so
 * that a message found twice at the hub can be followed back hop by hop. Unset, `traceOrigin`
 * is one check of a constant.
 */
const dir = process.env.STRATA_ORIGIN_TRACE;
export const tracingOrigins = dir !== undefined && dir !== '';

let fd: number | undefined;
let pending: string[] = [];
let scheduled = false;

function flush(): void {
  scheduled = false;
  if (pending.length === 0) return;
  const text = pending.join('');
  pending = [];
  try {
    fd ??= openSync(join(dir!, `${process.pid}.jsonl`), 'a');
    writeSync(fd, text);
  } catch {
    /* a diagnostic; never the process's problem */
  }
}

/** Records one decision; written within the tick, so a kill -9 loses at most the current one. */
export function traceOrigin(point: string, fields: Record<string, unknown>): void {
  if (!tracingOrigins) return;
  pending.push(`${JSON.stringify({ t: Date.now(), p: point, ...fields })}\n`);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
}

if (tracingOrigins)
  process.on('exit', () => {
    flush();
    if (fd !== undefined) closeSync(fd);
  });
