/**
 * Log lines for a person: pino's JSON line turned into `12:00:01.234 WARN  component: message
 * key=value ...`, used when the output is a terminal (or STRATA_LOG_FORMAT=pretty). Piped or
 * redirected output stays JSON, one object a line, for tools.
 */

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const COLOURS: Record<number, string> = { 40: '\x1b[33m', 50: '\x1b[31m', 60: '\x1b[31m' };
const RESET = '\x1b[0m';

export type LogFormat = 'json' | 'pretty';

/** STRATA_LOG_FORMAT when it says json or pretty, else pretty on a terminal and JSON otherwise. */
export function logFormatFor(env: string | undefined, isTTY: boolean): LogFormat {
  const v = env?.trim().toLowerCase();
  if (v === 'json' || v === 'pretty') return v;
  return isTTY ? 'pretty' : 'json';
}

function clock(ms: number): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function value(v: unknown): string {
  if (typeof v === 'string') return /[\s"=]/.test(v) || v === '' ? JSON.stringify(v) : v;
  return JSON.stringify(v);
}

/** One JSON log line as a readable line (with the stack of an error below it); a line that is not JSON passes as it is. */
export function prettyLine(line: string, colour = false): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const { level, time, msg, component, err, ...rest } = o;
  const lvl = typeof level === 'number' ? level : 30;
  const name = (LEVELS[lvl] ?? String(level)).padEnd(5);
  const head = `${typeof time === 'number' ? clock(time) : ''} ${colour && COLOURS[lvl] ? `${COLOURS[lvl]}${name}${RESET}` : name}`;
  const fields = Object.entries(rest).map(([k, v]) => `${k}=${value(v)}`);
  const e = err as { message?: string; stack?: string } | undefined;
  if (e?.message) fields.unshift(`err=${value(e.message)}`);
  const text = `${head} ${component ? `${String(component)}: ` : ''}${typeof msg === 'string' ? msg : ''}${fields.length ? `  ${fields.join(' ')}` : ''}`;
  const stack = lvl >= 50 && e?.stack ? `\n    ${e.stack.split('\n').slice(1).join('\n    ').trim()}` : '';
  return `${text}${stack}\n`;
}
