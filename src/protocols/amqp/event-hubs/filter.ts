/**
 * Where a partition receiver starts. Event Hubs clients say it with a selector filter on the
 * link source: `apache.org:selector-filter:string` holding e.g.
 * `amqp.annotation.x-opt-offset > '-1'` (the earliest event), `... x-opt-offset > '@latest'`
 * (only new events), `... x-opt-sequence-number >= '42'` or `... x-opt-enqueued-time > '1700000000000'`.
 */

export type StartPosition =
  | { kind: 'earliest' }
  | { kind: 'latest' }
  | { kind: 'offset'; offset: number; inclusive: boolean }
  | { kind: 'sequence'; sequenceNumber: number; inclusive: boolean }
  | { kind: 'time'; time: number; inclusive: boolean };

export const SELECTOR_FILTER = 'apache.org:selector-filter:string';
/** The descriptor of the selector filter (Microsoft's described type 0x0000468C:0x00000004). */
export const SELECTOR_FILTER_CODE = 0x468c00000004;

export class FilterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FilterError';
  }
}

const EXPRESSION =
  /^\s*amqp\.annotation\.(x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time)\s*(>=|>|=)\s*(?:'([^']*)'|"([^"]*)"|(\S+))\s*$/i;

/** The text inside a described value as rhea decodes it (plain, or wrapped in `.value` layers). */
export function describedText(v: unknown): string | undefined {
  for (let depth = 0; depth < 4; depth++) {
    if (typeof v === 'string') return v;
    if (Buffer.isBuffer(v)) return v.toString('utf8');
    if (v && typeof v === 'object' && 'value' in v) {
      v = (v as { value: unknown }).value;
      continue;
    }
    return undefined;
  }
  return undefined;
}

/** The selector expression in a source's filter set, if it has one. */
export function selectorOf(filterSet: unknown): string | undefined {
  if (!filterSet || typeof filterSet !== 'object') return undefined;
  for (const [key, value] of Object.entries(filterSet as Record<string, unknown>)) {
    if (key.toLowerCase() === SELECTOR_FILTER) {
      const text = describedText(value);
      if (text === undefined) throw new FilterError(`the ${SELECTOR_FILTER} filter must hold a string expression`);
      return text;
    }
  }
  return undefined;
}

/** Reads the start position from a link source's filter set; no filter starts at the earliest event kept. */
export function parseStartFilter(filterSet: unknown): StartPosition {
  const expression = selectorOf(filterSet);
  if (expression === undefined) return { kind: 'earliest' };
  return parseStartExpression(expression);
}

export function parseStartExpression(expression: string): StartPosition {
  const m = EXPRESSION.exec(expression);
  if (!m) {
    throw new FilterError(
      `unsupported start filter "${expression.slice(0, 200)}": expected amqp.annotation.x-opt-offset, x-opt-sequence-number or x-opt-enqueued-time, then > or >=, then a quoted value`,
    );
  }
  const field = m[1]!.toLowerCase();
  const inclusive = m[2] !== '>';
  const value = (m[3] ?? m[4] ?? m[5] ?? '').trim();
  switch (field) {
    case 'x-opt-offset': {
      if (value === '@latest') return { kind: 'latest' };
      const n = wholeNumber(value);
      if (n === undefined)
        throw new FilterError(
          `offset "${value}" is not an offset of this hub: use a decimal number, -1 for the earliest event or @latest`,
        );
      if (n < 0) return { kind: 'earliest' };
      return { kind: 'offset', offset: n, inclusive };
    }
    case 'x-opt-sequence-number': {
      const n = wholeNumber(value);
      if (n === undefined) throw new FilterError(`sequence number "${value}" is not a whole number`);
      if (n < 0) return { kind: 'earliest' };
      return { kind: 'sequence', sequenceNumber: n, inclusive };
    }
    default: {
      // Milliseconds since the epoch, as the clients send it; an ISO date is taken too.
      const n = wholeNumber(value);
      const time = n ?? (/^\d{4}-\d{2}-\d{2}/.test(value) ? Date.parse(value) : NaN);
      if (!Number.isFinite(time))
        throw new FilterError(`enqueued time "${value}" is neither milliseconds since the epoch nor an ISO date`);
      return { kind: 'time', time, inclusive };
    }
  }
}

function wholeNumber(s: string): number | undefined {
  if (!/^-?\d{1,16}$/.test(s)) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : undefined;
}

export function describeStart(p: StartPosition): string {
  switch (p.kind) {
    case 'earliest':
      return 'the earliest event';
    case 'latest':
      return 'new events only';
    case 'offset':
      return `offset ${p.inclusive ? '>=' : '>'} ${p.offset}`;
    case 'sequence':
      return `sequence number ${p.inclusive ? '>=' : '>'} ${p.sequenceNumber}`;
    case 'time':
      return `enqueued ${p.inclusive ? 'at or after' : 'after'} ${new Date(p.time).toISOString()}`;
  }
}
