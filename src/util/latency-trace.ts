import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';

/**
 * A diagnostic for finding where a message's time goes (bench/gateway.ts --trace): with
 * STRATA_LATENCY_TRACE set to a directory, `mark(point, body)` records how long ago the time
 * stamped in a body's first 8 bytes (ms since the epoch, as the benchmark's leaves stamp it)
 * was, per named point, and every second the process writes the percentiles to
 * DIR/<pid>.json. Unset, `mark` is one check of a constant.
 */
const dir = process.env.STRATA_LATENCY_TRACE;
export const tracing = dir !== undefined && dir !== '';

const samples = new Map<string, number[]>();
/** Per point, the largest age seen among the messages stamped in each second since the first stamp. */
const worstBySecond = new Map<string, number[]>();
let firstStamp = 0;

export function mark(point: string, body: Buffer | undefined): void {
  if (!tracing || body === undefined || body.length < 8) return;
  const now = Date.now();
  const stamped = Number(body.readBigUInt64BE(0));
  // Anything else (a real device's payload) is not a benchmark's stamp.
  if (stamped > now || stamped < now - 600_000) return;
  let s = samples.get(point);
  if (!s) samples.set(point, (s = []));
  s.push(now - stamped);
  if (firstStamp === 0) firstStamp = stamped;
  let w = worstBySecond.get(point);
  if (!w) worstBySecond.set(point, (w = []));
  const sec = Math.max(0, Math.floor((stamped - firstStamp) / 1000));
  w[sec] = Math.max(w[sec] ?? 0, now - stamped);
}

/** Records a duration (ms) under `point`, e.g. how long a COMMIT held the event loop. */
export function took(point: string, ms: number): void {
  if (!tracing) return;
  let s = samples.get(point);
  if (!s) samples.set(point, (s = []));
  s.push(Math.round(ms * 10) / 10);
}

function pct(sorted: number[], f: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(f * sorted.length))] ?? NaN;
}

if (tracing) {
  // Stalls of the event loop (a long synchronous COMMIT or checkpoint holds every message).
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const out = join(dir!, `${process.pid}.json`);
  setInterval(() => {
    const report: Record<string, unknown> = { pid: process.pid, argv: process.argv.slice(2).join(' ') };
    report.loopDelay = { p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 };
    for (const [point, s] of samples) {
      const sorted = [...s].sort((a, b) => a - b);
      const worst = worstBySecond.get(point);
      report[point] = {
        n: s.length,
        p50: pct(sorted, 0.5),
        p99: pct(sorted, 0.99),
        max: sorted[sorted.length - 1],
        ...(worst ? { worstBySecond: Array.from(worst, (x) => x ?? null).join(' ') } : {}),
      };
    }
    try {
      writeFileSync(out, `${JSON.stringify(report)}\n`);
    } catch {
      /* a diagnostic; never the process's problem */
    }
  }, 1000).unref();
}
