/**
 * The `filter` of a `GetModuleLogs` item as IoT Edge's schema has it: `tail` (the last N lines),
 * `since` and `until` (a duration back from now such as "10m", "1 d", "2 hours 30 minutes"; a
 * unix timestamp in seconds; or an RFC 3339 time), `loglevel` (a syslog severity 0-7: only lines
 * of that level) and `regex` (only lines it matches). A line's level comes from IoT Edge's
 * recommended module log format, `<6> 2026-12-07 14:00:00.000 +00:00 [INF] text`; a line without
 * a `<N>` prefix counts as 6 (informational), as the original counts it.
 */

export interface LogFilter {
  tail?: number;
  /** Epoch ms. */
  since?: number;
  until?: number;
  loglevel?: number;
  regex?: RegExp;
}

/** The level a line without a `<N>` prefix counts as. */
export const DEFAULT_LOG_LEVEL = 6;

const UNIT_SECS: Record<string, number> = {
  s: 1,
  sec: 1,
  secs: 1,
  second: 1,
  seconds: 1,
  m: 60,
  min: 60,
  mins: 60,
  minute: 60,
  minutes: 60,
  h: 3600,
  hr: 3600,
  hrs: 3600,
  hour: 3600,
  hours: 3600,
  d: 86400,
  day: 86400,
  days: 86400,
  w: 604800,
  week: 604800,
  weeks: 604800,
};

/** "10m", "1 d", "2 days 3 hours 2 minutes": seconds; undefined when it is not a duration. */
export function parseDuration(text: string): number | undefined {
  const parts = [...text.trim().matchAll(/(\d+(?:\.\d+)?)\s*([a-z]+)\s*/gi)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text.trim()) return undefined;
  let secs = 0;
  for (const [, n, unit] of parts) {
    const per = UNIT_SECS[unit!.toLowerCase()];
    if (per === undefined) return undefined;
    secs += Number(n) * per;
  }
  return secs;
}

/** A point in time as `since`/`until` give it, in epoch ms; undefined when it is none. */
export function parseLogTime(value: unknown, now: number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value * 1000 : undefined;
  if (typeof value !== 'string' || value.trim() === '') return undefined;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text) * 1000;
  const duration = parseDuration(text);
  if (duration !== undefined) return now - duration * 1000;
  if (/^\d{4}-\d\d-\d\dT/.test(text)) {
    const t = Date.parse(text);
    return Number.isNaN(t) ? undefined : t;
  }
  return undefined;
}

/** Reads a request's `filter`; throws naming the field when one is wrong. `at` names the item. */
export function readLogFilter(raw: unknown, at: string, now: number): LogFilter {
  if (raw === undefined || raw === null) return {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${at}.filter: must be an object`);
  const f = raw as Record<string, unknown>;
  const out: LogFilter = {};
  if (f.tail !== undefined && f.tail !== null) {
    const tail = Number(f.tail);
    if (!Number.isInteger(tail) || tail < 0) throw new Error(`${at}.filter.tail: must be a whole number`);
    out.tail = tail;
  }
  for (const key of ['since', 'until'] as const) {
    if (f[key] === undefined || f[key] === null) continue;
    const t = parseLogTime(f[key], now);
    if (t === undefined)
      throw new Error(
        `${at}.filter.${key}: ${JSON.stringify(f[key])} is not a duration ("10m", "1 d"), a unix timestamp or an RFC 3339 time`,
      );
    out[key] = t;
  }
  if (out.since !== undefined && out.until !== undefined && out.since > out.until)
    throw new Error(`${at}.filter: since is after until`);
  if (f.loglevel !== undefined && f.loglevel !== null) {
    const level = Number(f.loglevel);
    if (!Number.isInteger(level) || level < 0 || level > 7)
      throw new Error(`${at}.filter.loglevel: must be a syslog severity from 0 to 7`);
    out.loglevel = level;
  }
  if (f.regex !== undefined && f.regex !== null) {
    if (typeof f.regex !== 'string') throw new Error(`${at}.filter.regex: must be a string`);
    try {
      out.regex = new RegExp(f.regex);
    } catch {
      throw new Error(`${at}.filter.regex: ${JSON.stringify(f.regex)} is not a valid regular expression`);
    }
  }
  return out;
}

/** A line's syslog severity: its `<N>` prefix, else DEFAULT_LOG_LEVEL. */
export function lineLevel(line: string): number {
  const m = /^<([0-7])>/.exec(line);
  return m ? Number(m[1]) : DEFAULT_LOG_LEVEL;
}

/**
 * The time a line says it was written: a timestamp at its start, after the `<N>` level if any
 * ("2026-12-07 14:00:00.000 +00:00", "2026-12-07T14:00:00Z"; without a zone, UTC). Undefined
 * when it carries none.
 */
export function lineTime(line: string): number | undefined {
  const m = /^(?:<[0-7]>\s*)?(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d(?:\.\d+)?)\s*(Z|[+-]\d\d:?\d\d)?/.exec(line);
  if (!m) return undefined;
  const zone = m[3] === undefined || m[3] === 'Z' ? 'Z' : m[3].replace(/^([+-]\d\d)(\d\d)$/, '$1:$2');
  const t = Date.parse(`${m[1]}T${m[2]}${zone}`);
  return Number.isNaN(t) ? undefined : t;
}

/**
 * Lines of a module whose output keeps no time per line (a process module), within `since` and
 * `until` by the lines' own times. A line without one goes with the last line before it that
 * had one (a stack trace with its message); lines before any timed line are kept, since nothing
 * says when they were written. Without following, the tail is taken of what is kept.
 */
export async function* withinTime(
  source: AsyncIterable<string>,
  opts: { since?: number; until?: number; tail?: number; follow?: boolean },
): AsyncGenerator<string> {
  let inside = true;
  const kept: string[] = [];
  for await (const line of source) {
    const t = lineTime(line);
    if (t !== undefined)
      inside = (opts.since === undefined || t >= opts.since) && (opts.until === undefined || t <= opts.until);
    if (!inside) continue;
    if (opts.follow || opts.tail === undefined) yield line;
    else kept.push(line);
  }
  if (!opts.follow && opts.tail !== undefined) yield* opts.tail === 0 ? [] : kept.slice(-opts.tail);
}

/** Whether the level and regex parts of the filter keep `line` (tail, since and until are the runtime's). */
export function keepsLine(filter: LogFilter, line: string): boolean {
  if (filter.loglevel !== undefined && lineLevel(line) !== filter.loglevel) return false;
  return filter.regex === undefined || filter.regex.test(line);
}

/**
 * The module's lines under `filter`: tail, since and until go to the runtime (the engine knows
 * when each line was written), level and regex are applied here, and with either of those the
 * tail is taken last, of the lines they kept.
 */
export async function filteredLines(
  read: (opts: { tail?: number; since?: number; until?: number }) => Promise<AsyncIterable<string>>,
  filter: LogFilter,
): Promise<string[]> {
  const narrows = filter.loglevel !== undefined || filter.regex !== undefined;
  const lines: string[] = [];
  for await (const line of await read({
    tail: narrows ? undefined : filter.tail,
    since: filter.since,
    until: filter.until,
  }))
    if (keepsLine(filter, line)) lines.push(line);
  if (narrows && filter.tail !== undefined) return filter.tail === 0 ? [] : lines.slice(-filter.tail);
  return lines;
}
