import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';

/**
 * A diagnostic for finding where a message's time goes (bench/gateway.ts --trace): with
 * STRATA_LATENCY_TRACE set to a directory, `mark(point, body)` records how long ago the time
 * stamped in a body's first 8 bytes (ms since the epoch, as the benchmark's leaves stamp it)
 * was, per named point, and every second the process writes the percentiles to
 * DIR/<pid>.json, with the worst age per 100 ms of the first 2 s, per-second figures of the
 * durations `took` records, the event loop's stalls and the clocks that line a V8 CPU profile up
 * with the stamps (the start-up seconds are where a run's tail comes from). Unset, `mark` is one
 * check of a constant.
 */
const dir = process.env.STRATA_LATENCY_TRACE;
export const tracing = dir !== undefined && dir !== '';

/**
 * Per point, how many samples fell in each 0.1 ms step (the last step holds everything above):
 * the report costs the same at the end of a long run as at its start, so the diagnostic does
 * not stall the process it measures.
 */
const STEPS = 100_000;
const samples = new Map<string, { counts: Uint32Array; n: number; max: number }>();
function record(point: string, ms: number): void {
  let s = samples.get(point);
  if (!s) samples.set(point, (s = { counts: new Uint32Array(STEPS + 1), n: 0, max: 0 }));
  s.counts[Math.min(STEPS, Math.max(0, Math.round(ms * 10)))]!++;
  s.n++;
  if (ms > s.max) s.max = ms;
}
const spans = new Map<string, [number, number]>();
/** Stalls of the event loop over 20 ms, as [ms since the epoch when noticed, ms late], the first 200. */
const stalls: Array<[number, number]> = [];
/** Per point, the largest age seen among the messages stamped in each second since the first stamp. */
const worstBySecond = new Map<string, number[]>();
let firstStamp = 0;

export function mark(point: string, body: Buffer | undefined): void {
  if (!tracing || body === undefined || body.length < 8) return;
  const now = Date.now();
  const stamped = Number(body.readBigUInt64BE(0));
  // Anything else (a real device's payload) is not a benchmark's stamp.
  if (stamped > now || stamped < now - 600_000) return;
  record(point, now - stamped);
  if (firstStamp === 0) firstStamp = stamped;
  let w = worstBySecond.get(point);
  if (!w) worstBySecond.set(point, (w = []));
  const sec = Math.max(0, Math.floor((stamped - firstStamp) / 1000));
  w[sec] = Math.max(w[sec] ?? 0, now - stamped);
  const tenth = Math.floor((stamped - firstStamp) / 100);
  if (tenth >= 0 && tenth < 20) {
    let f = worstFirst2s.get(point);
    if (!f) worstFirst2s.set(point, (f = []));
    f[tenth] = Math.max(f[tenth] ?? 0, now - stamped);
  }
}
/** Per point, the largest age among the messages stamped in each 100 ms of the first 2 s. */
const worstFirst2s = new Map<string, number[]>();

/** Records a duration (ms) under `point`, e.g. how long a COMMIT held the event loop. */
export function took(point: string, ms: number): void {
  if (!tracing) return;
  record(point, ms);
  const now = Date.now();
  const span = spans.get(point);
  if (span) span[1] = now;
  else spans.set(point, [now, now]);
  // Per wall-clock second: how many, their sum and the longest (does it cost more at first?).
  let per = perSecond.get(point);
  if (!per) perSecond.set(point, (per = new Map()));
  const sec = Math.floor(now / 1000);
  const x = per.get(sec);
  if (x) {
    x[0]++;
    x[1] += ms;
    x[2] = Math.max(x[2], ms);
  } else per.set(sec, [1, ms, ms]);
}
const perSecond = new Map<string, Map<number, [number, number, number]>>();

function pct(s: { counts: Uint32Array; n: number }, f: number): number {
  const rank = Math.min(s.n - 1, Math.floor(f * s.n));
  let seen = 0;
  for (let i = 0; i < s.counts.length; i++) {
    seen += s.counts[i]!;
    if (seen > rank) return i / 10;
  }
  return NaN;
}

if (tracing) {
  // Stalls of the event loop (a long synchronous COMMIT or checkpoint holds every message).
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const out = join(dir!, `${process.pid}.json`);
  // When the loop stalled: a timer every 10 ms that fires late by more than 20 ms.
  let expected = Date.now() + 10;
  setInterval(() => {
    const now = Date.now();
    if (now - expected > 20 && stalls.length < 200) stalls.push([now, now - expected]);
    expected = now + 10;
  }, 10).unref();
  setInterval(() => {
    const report: Record<string, unknown> = { pid: process.pid, argv: process.argv.slice(2).join(' ') };
    report.loopDelay = { p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 };
    for (const [point, s] of samples) {
      const worst = worstBySecond.get(point);
      report[point] = {
        n: s.n,
        p50: pct(s, 0.5),
        p99: pct(s, 0.99),
        max: Math.round(s.max * 10) / 10,
        ...(worst ? { worstBySecond: Array.from(worst, (x) => x ?? null).join(' ') } : {}),
        ...(worstFirst2s.has(point)
          ? { worstBy100msFirst2s: Array.from(worstFirst2s.get(point)!, (x) => x ?? null).join(' ') }
          : {}),
        ...(spans.has(point) ? { span: spans.get(point) } : {}),
        ...(perSecond.has(point)
          ? {
              perSecond: [...perSecond.get(point)!].map(([sec, [n, sum, max]]) => [
                sec * 1000,
                n,
                Math.round((sum / n) * 10) / 10,
                Math.round(max * 10) / 10,
              ]),
            }
          : {}),
      };
    }
    report.stalls = stalls;
    // The monotonic clock (a V8 CPU profile's time base, in us) beside the epoch: profiles line up with the stamps.
    report.clocks = { epochMs: Date.now(), monoUs: Number(process.hrtime.bigint() / 1000n) };
    try {
      writeFileSync(out, `${JSON.stringify(report)}\n`);
    } catch {
      /* a diagnostic; never the process's problem */
    }
  }, 1000).unref();
}
