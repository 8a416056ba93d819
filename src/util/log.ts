import { pino, type Logger, type LoggerOptions } from 'pino';
import { logFormatFor, prettyLine } from './log-format.ts';

/** Longest string a log field may carry; anything from the wire is cut far shorter (wireText). */
const MAX_FIELD_CHARS = 1024;
/** Longest log message: messages quote wire values, which must never make a line huge. */
const MAX_MESSAGE_CHARS = 2048;

/** pino hooks that bound each line: a safety net under wireText, so one client cannot write megabytes per line. */
export const boundedLines: LoggerOptions['hooks'] = {
  logMethod(args, method) {
    const [first, ...rest] = args as unknown[];
    if (typeof first === 'string') return method.apply(this, [clip(first, MAX_MESSAGE_CHARS), ...rest] as never);
    if (first && typeof first === 'object' && !(first instanceof Error)) {
      const obj = boundFields(first as Record<string, unknown>);
      const msg = typeof rest[0] === 'string' ? [clip(rest[0], MAX_MESSAGE_CHARS), ...rest.slice(1)] : rest;
      return method.apply(this, [obj, ...msg] as never);
    }
    return method.apply(this, args as never);
  },
};

const format = logFormatFor(process.env.STRATA_LOG_FORMAT, process.stdout.isTTY === true);

/**
 * One process-wide logger; STRATA_LOG_LEVEL=debug|info|warn|error|silent tunes it, and
 * STRATA_LOG_FORMAT=json|pretty its form (default: pretty on a terminal, JSON otherwise).
 */
export const log: Logger = pino(
  { level: process.env.STRATA_LOG_LEVEL ?? 'info', base: undefined, hooks: boundedLines },
  ...(format === 'pretty' ? [{ write: (line: string) => process.stdout.write(prettyLine(line, true)) }] : []),
);

export function childLog(component: string): Logger {
  return log.child({ component });
}

/** How many characters of a value that came from the wire a log line quotes. */
export const WIRE_TEXT_CHARS = 128;

/**
 * A value a client sent, fit for a log line: at most `max` characters, and when cut a marker
 * with the original length, so that a 64 KiB client id costs a log line 200 bytes.
 */
export function wireText(value: unknown, max = WIRE_TEXT_CHARS): string {
  const s = typeof value === 'string' ? value : Buffer.isBuffer(value) ? value.toString('latin1') : String(value);
  return s.length <= max ? s : `${s.slice(0, max)}...[cut, ${s.length} chars]`;
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : wireText(s, max);
}

function boundFields(obj: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(obj)) {
    let bounded: unknown = v;
    if (typeof v === 'string' && v.length > MAX_FIELD_CHARS) bounded = clip(v, MAX_FIELD_CHARS);
    else if (Array.isArray(v) && v.length > 0 && v.some((x) => typeof x === 'string' && x.length > MAX_FIELD_CHARS)) {
      bounded = v.slice(0, 32).map((x) => (typeof x === 'string' ? clip(x, MAX_FIELD_CHARS) : x));
    }
    if (bounded !== v) (out ??= { ...obj })[k] = bounded;
  }
  return out ?? obj;
}

/** The address part of `host:port` (IPv6 too): what rate limits and caps are kept per. */
export function sourceAddress(remote: string): string {
  const i = remote.lastIndexOf(':');
  if (i <= 0) return remote;
  const host = remote.slice(0, i);
  return host.startsWith('::ffff:') ? host.slice(7) : host;
}

export interface SourceLimitOptions {
  /** Lines logged per source in each interval before the rest are only counted (default 20). */
  burst?: number;
  /** Length of an interval (default 10 s). */
  intervalMs?: number;
  /** Sources remembered at most; the oldest is dropped first (default 10,000). */
  maxSources?: number;
}

/**
 * Rate limit for log lines about one source (a client address): the first `burst` lines of an
 * interval are written, the rest only counted, and the count is written as one line
 * "N more from ADDR" when the next line from that source comes or the interval ends.
 */
export class SourceLogLimiter {
  private readonly burst: number;
  private readonly intervalMs: number;
  private readonly maxSources: number;
  private readonly sources = new Map<string, SourceEntry>();
  private timer?: NodeJS.Timeout;

  constructor(o: SourceLimitOptions = {}) {
    this.burst = o.burst ?? 20;
    this.intervalMs = o.intervalMs ?? 10_000;
    this.maxSources = o.maxSources ?? 10_000;
  }

  /** Logs at warn through `logger` unless `source` has used up its lines of this interval. */
  warn(logger: Logger, source: string, obj: Record<string, unknown>, msg: string): void {
    this.write(logger, 'warn', source, obj, msg);
  }

  info(logger: Logger, source: string, obj: Record<string, unknown>, msg: string): void {
    this.write(logger, 'info', source, obj, msg);
  }

  private write(
    logger: Logger,
    level: 'warn' | 'info',
    source: string,
    obj: Record<string, unknown>,
    msg: string,
  ): void {
    const now = Date.now();
    let s = this.sources.get(source);
    if (s && now - s.since >= this.intervalMs) {
      this.summarise(source, s);
      this.sources.delete(source);
      s = undefined;
    }
    if (!s) {
      if (this.sources.size >= this.maxSources) {
        const [oldest, entry] = this.sources.entries().next().value as [string, SourceEntry];
        this.summarise(oldest, entry);
        this.sources.delete(oldest);
      }
      s = { since: now, logged: 0, suppressed: 0, what: msg, logger };
      this.sources.set(source, s);
      this.arm();
    }
    if (s.logged < this.burst) {
      s.logged++;
      logger[level](obj, msg);
    } else {
      s.suppressed++;
      s.what = msg;
      s.logger = logger;
    }
  }

  private summarise(source: string, s: SourceEntry): void {
    if (s.suppressed > 0)
      s.logger.warn(
        { remote: source, suppressed: s.suppressed },
        `${s.suppressed} more from ${source} (last: ${s.what})`,
      );
  }

  /** One timer for all sources: writes the counts of intervals that ended. */
  private arm(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = Date.now();
      for (const [source, s] of this.sources) {
        if (now - s.since < this.intervalMs) continue;
        this.summarise(source, s);
        this.sources.delete(source);
      }
      if (this.sources.size > 0) this.arm();
    }, this.intervalMs);
    this.timer.unref();
  }
}

interface SourceEntry {
  since: number;
  logged: number;
  suppressed: number;
  /** The last message counted, quoted in the summary. */
  what: string;
  logger: Logger;
}

/**
 * The limiter shared by every listener for lines about clients that are not (or failed to be)
 * authenticated: one address flooding MQTT, AMQP and TLS together still gets `burst` lines.
 */
export const refusals = new SourceLogLimiter();
