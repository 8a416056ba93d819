/**
 * The built-in functions (names are case-insensitive). Each function has one or more
 * signatures tried in order at compile time, exactly like the original: the first whose
 * parameter types accept the argument types is used, and no match is a compile error
 * (`lower(3)`, `length(null)`, `concat('a')`). `$body` values are accepted wherever a
 * number, string or bool is; they are checked at run time and give undefined when the kind is
 * wrong. twin_change_includes is not here: it reads its argument as a path, see compiler.ts.
 */
import { MISSING, type BodyValue } from './body-path.ts';

/** Static types of expressions. `value` is a `$body` value whose kind is only known at run time. */
export type QType = 'string' | 'number' | 'bool' | 'null' | 'undefined' | 'value';

/**
 * Runtime representation per static type: string -> string | undefined; number -> number
 * (NaN means undefined, as in the original); bool -> boolean | undefined; null -> null;
 * undefined -> undefined; value -> BodyValue.
 */
export type Runtime = unknown;

type Signature =
  | { kind: 'args'; types: QType[]; body: boolean }
  | { kind: 'any'; arity: number }
  /** at least types.length - 1 arguments; the last type repeats */
  | { kind: 'var'; types: QType[]; body: boolean };

export interface Executor {
  sig: Signature;
  result: QType;
  /** Arguments arrive as BodyValue when the signature accepts body values, else in their static type's representation. */
  run: (args: Runtime[]) => Runtime;
}

const SCALAR = new Set<QType>(['null', 'number', 'string', 'bool']);

/** Whether a parameter of type `required` takes an argument of type `given` (the original's rule). */
export function accepts(required: QType, given: QType, bodyValues: boolean): boolean {
  if (required === given) return true;
  if (!bodyValues) return false;
  return (given === 'value' && SCALAR.has(required)) || (required === 'value' && SCALAR.has(given));
}

function matches(sig: Signature, types: QType[]): boolean {
  switch (sig.kind) {
    case 'any':
      return types.length === sig.arity;
    case 'args':
      return types.length === sig.types.length && types.every((t, i) => accepts(sig.types[i], t, sig.body));
    case 'var': {
      const fixed = sig.types.length - 1;
      if (types.length < fixed) return false;
      return types.every((t, i) => {
        const want = sig.types[Math.min(i, fixed)];
        return t === want || (sig.body && t === 'value');
      });
    }
  }
}

/** Converts a value of a static type to the BodyValue representation (undefined stays undefined, NaN becomes undefined). */
export function toBodyValue(type: QType, v: Runtime): BodyValue {
  switch (type) {
    case 'number':
      return Number.isNaN(v as number) ? undefined : (v as number);
    case 'null':
      return null;
    case 'undefined':
      return undefined;
    default:
      return v as BodyValue;
  }
}

const num = (v: Runtime): number | undefined => (typeof v === 'number' ? v : undefined);
const str = (v: Runtime): string | undefined => (typeof v === 'string' ? v : undefined);

function numeric(f: (x: number) => number): Executor {
  return {
    sig: { kind: 'args', types: ['number'], body: true },
    result: 'number',
    run: ([a]) => {
      const x = num(a);
      return x === undefined ? NaN : f(x);
    },
  };
}

function stringToString(f: (s: string) => string): Executor {
  return {
    sig: { kind: 'args', types: ['string'], body: true },
    result: 'string',
    run: ([a]) => {
      const s = str(a);
      return s === undefined ? undefined : f(s);
    },
  };
}

function twoStrings(result: 'bool' | 'number', f: (s: string, part: string) => boolean | number): Executor {
  return {
    sig: { kind: 'args', types: ['string', 'string'], body: true },
    result,
    run: ([a, b]) => {
      const s = str(a);
      const p = str(b);
      if (s === undefined || p === undefined) return result === 'number' ? NaN : undefined;
      return f(s, p);
    },
  };
}

const constant = (value: boolean): Executor => ({ sig: { kind: 'any', arity: 1 }, result: 'bool', run: () => value });

/** Math.Pow of the original follows IEEE 754: 1 and -1 to an infinite power are 1 (JavaScript says NaN). */
export function ieeePow(x: number, y: number): number {
  if (Math.abs(x) === 1 && (y === Infinity || y === -Infinity)) return 1;
  return x ** y;
}

/**
 * as_number's string parsing, following the original's invariant-culture "any number style":
 * surrounding white space, a leading or trailing sign or parentheses for negative, "," thousands
 * separators in the integer part, "." decimals, an exponent, the currency sign "¤", and
 * Infinity. Hex is not accepted. Anything else is undefined (NaN).
 */
export function parseInvariantNumber(input: string): number {
  let t = input.replace(/^[\t\n\v\f\r ]+|[\t\n\v\f\r ]+$/g, '');
  const inf = /^([+-]?)(?:infinity|∞)$/i.exec(t);
  if (inf) return inf[1] === '-' ? -Infinity : Infinity;
  let negative = false;
  let signed = false;
  if (t.startsWith('(') && t.endsWith(')')) {
    negative = true;
    signed = true;
    t = t.slice(1, -1);
  }
  let currency = false;
  for (let changed = true; changed; ) {
    changed = false;
    if (!currency && t.startsWith('¤')) {
      currency = changed = true;
      t = t.slice(1);
    } else if (!signed && (t.startsWith('+') || t.startsWith('-'))) {
      signed = changed = true;
      negative = t[0] === '-';
      t = t.slice(1);
    }
  }
  for (let changed = true; changed; ) {
    changed = false;
    if (!currency && t.endsWith('¤')) {
      currency = changed = true;
      t = t.slice(0, -1);
    } else if (!signed && (t.endsWith('+') || t.endsWith('-'))) {
      signed = changed = true;
      negative = t.endsWith('-');
      t = t.slice(0, -1);
    }
  }
  if (!/^(?:[0-9][0-9,]*(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/.test(t)) return NaN;
  const n = Number(t.replace(/,/g, ''));
  return negative ? -n : n;
}

/** Invariant-culture case mapping: one character in, one character out (no "ß" -> "SS", no context-dependent final sigma). */
function mapCase(s: string, upper: boolean): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: \x00-\x7f is the whole ASCII range, control characters included
  if (/^[\x00-\x7f]*$/.test(s)) return upper ? s.toUpperCase() : s.toLowerCase();
  let out = '';
  for (const ch of s) {
    const m = upper ? ch.toUpperCase() : ch.toLowerCase();
    if ([...m].length === 1) out += m;
    else out += !upper && ch === '\u0130' ? 'i' : ch;
  }
  return out;
}

function substring2([a, b]: Runtime[]): Runtime {
  const s = str(a);
  const start = num(b);
  if (s === undefined || start === undefined || !(start >= 0 && start <= s.length)) return undefined;
  return s.substring(Math.trunc(start));
}

function substring3([a, b, c]: Runtime[]): Runtime {
  const s = str(a);
  const start = num(b);
  const len = num(c);
  if (s === undefined || start === undefined || len === undefined) return undefined;
  if (!(start >= 0 && start < s.length && len >= 0 && len <= s.length - start)) return undefined;
  const from = Math.trunc(start);
  return s.substring(from, from + Math.trunc(len));
}

export const BUILTINS: Record<string, Executor[]> = {
  // math
  abs: [numeric(Math.abs)],
  exp: [numeric(Math.exp)],
  power: [
    {
      sig: { kind: 'args', types: ['number', 'number'], body: true },
      result: 'number',
      run: ([a, b]) => {
        const x = num(a);
        const y = num(b);
        return x === undefined || y === undefined ? NaN : ieeePow(x, y);
      },
    },
  ],
  square: [numeric((x) => ieeePow(x, 2))],
  ceiling: [numeric(Math.ceil)],
  floor: [numeric(Math.floor)],
  sign: [numeric((x) => (x > 0 ? 1 : x < 0 ? -1 : 0))],
  sqrt: [numeric(Math.sqrt)],

  // type checks
  as_number: [
    {
      sig: { kind: 'args', types: ['string'], body: true },
      result: 'number',
      run: ([a]) => (typeof a === 'string' ? parseInvariantNumber(a) : typeof a === 'number' ? a : NaN),
    },
    { sig: { kind: 'args', types: ['number'], body: false }, result: 'number', run: ([a]) => a },
  ],
  is_bool: [
    {
      sig: { kind: 'args', types: ['bool'], body: true },
      result: 'bool',
      // An undefined bool or unreadable body value gives undefined here, not false (as in the original).
      run: ([a]) => (a === undefined ? undefined : typeof a === 'boolean'),
    },
    constant(false),
  ],
  is_defined: [
    { sig: { kind: 'args', types: ['string'], body: false }, result: 'bool', run: ([a]) => a !== undefined },
    { sig: { kind: 'args', types: ['number'], body: false }, result: 'bool', run: ([a]) => !Number.isNaN(a) },
    { sig: { kind: 'args', types: ['bool'], body: false }, result: 'bool', run: ([a]) => a !== undefined },
    { sig: { kind: 'args', types: ['undefined'], body: false }, result: 'bool', run: () => false },
    { sig: { kind: 'args', types: ['null'], body: false }, result: 'bool', run: () => true },
    { sig: { kind: 'args', types: ['value'], body: false }, result: 'bool', run: ([a]) => a !== undefined },
  ],
  is_null: [
    // Properties are never null (a set property always has a string value).
    { sig: { kind: 'args', types: ['string'], body: false }, result: 'bool', run: () => false },
    {
      sig: { kind: 'args', types: ['value'], body: false },
      result: 'bool',
      run: ([a]) => (a === undefined ? undefined : a === null || a === MISSING),
    },
    { sig: { kind: 'args', types: ['null'], body: false }, result: 'bool', run: () => true },
    constant(false),
  ],
  is_number: [
    {
      sig: { kind: 'args', types: ['number'], body: true },
      result: 'bool',
      run: ([a]) => typeof a === 'number' && Number.isFinite(a),
    },
    constant(false),
  ],
  is_string: [
    { sig: { kind: 'args', types: ['string'], body: true }, result: 'bool', run: ([a]) => typeof a === 'string' },
    constant(false),
  ],

  // strings (ordinal, i.e. case-sensitive UTF-16 comparisons)
  concat: [
    {
      sig: { kind: 'var', types: ['string', 'string', 'string'], body: true },
      result: 'string',
      run: (args) => (args.every((a) => typeof a === 'string') ? (args as string[]).join('') : undefined),
    },
  ],
  length: [
    {
      sig: { kind: 'args', types: ['string'], body: true },
      result: 'number',
      run: ([a]) => (typeof a === 'string' ? a.length : NaN),
    },
  ],
  lower: [stringToString((s) => mapCase(s, false))],
  upper: [stringToString((s) => mapCase(s, true))],
  substring: [
    { sig: { kind: 'args', types: ['string', 'number'], body: true }, result: 'string', run: substring2 },
    { sig: { kind: 'args', types: ['string', 'number', 'number'], body: true }, result: 'string', run: substring3 },
  ],
  index_of: [twoStrings('number', (s, p) => s.indexOf(p))],
  starts_with: [twoStrings('bool', (s, p) => s.startsWith(p))],
  ends_with: [twoStrings('bool', (s, p) => s.endsWith(p))],
  contains: [twoStrings('bool', (s, p) => s.includes(p))],
};

export function findExecutor(name: string, types: QType[]): Executor | undefined {
  return BUILTINS[name]?.find((e) => matches(e.sig, types));
}

function typeName(t: QType): string {
  return t === 'value' ? '$body value' : t;
}

/** e.g. "substring(string, number) or substring(string, number, number)". */
export function describeSignatures(name: string): string {
  return (BUILTINS[name] ?? [])
    .map((e) => {
      switch (e.sig.kind) {
        case 'any':
          return `${name}(anything)`;
        case 'args':
          return `${name}(${e.sig.types.map(typeName).join(', ')})`;
        case 'var':
          return `${name}(${e.sig.types.slice(0, -1).map(typeName).join(', ')}, ...)`;
      }
    })
    .join(' or ');
}

export { typeName };
