import { accepts, toBodyValue, typeName, type QType, type Runtime } from './builtins.ts';
import { comparator, definedIn, type CompareOp } from './compare.ts';
import type { BinaryOp } from './condition.ts';
import type { RouteSyntaxError } from './errors.ts';
import { and3, not3, or3, type Tri } from './logic.ts';
import type { MessageView } from './message.ts';

/**
 * The operators compiled: each checks its operands' static types when the route is compiled
 * (a mismatch is a RouteSyntaxError at the operator) and gives a closure that evaluates it.
 */

export type Eval = (m: MessageView) => Runtime;

/** A compiled expression: its static type and how to evaluate it. */
export interface Compiled {
  type: QType;
  ev: Eval;
}

/** Makes a compile error at a position of the route text. */
export type Fail = (at: number, detail: string, hint?: string) => RouteSyntaxError;

type ArithOp = '+' | '-' | '*' | '/' | '%';

function arith(op: ArithOp): (a: number, b: number) => number {
  switch (op) {
    case '+':
      return (a, b) => a + b;
    case '-':
      return (a, b) => a - b;
    case '*':
      return (a, b) => a * b;
    case '/':
      return (a, b) => a / b; // x/0 is ±Infinity (defined); 0/0 is NaN (undefined)
    case '%':
      return (a, b) => a % b; // x%0 is NaN (undefined)
  }
}

export function operandError(
  fail: Fail,
  at: number,
  op: string,
  have: QType[],
  expected: QType[] | string,
): RouteSyntaxError {
  const arity = have.length === 1 ? 'unary' : 'binary';
  const names = (ts: QType[] | string) => (typeof ts === 'string' ? ts : ts.map(typeName).join(' and '));
  let hint: string | undefined;
  if (have.includes('string') && have.includes('number')) {
    hint =
      'application and system properties are strings: compare with a string literal, or convert with as_number(name)';
  } else if (have.includes('undefined')) {
    hint = 'use is_defined(...) to test for undefined';
  } else if (op === '+' && have.every((t) => t === 'string')) {
    hint = 'use || or concat(...) to join strings';
  }
  return fail(
    at,
    `invalid operands to ${arity} operator "${op}": have ${names(have)}, expected ${names(expected)}`,
    hint,
  );
}

export function unary(fail: Fail, op: '-' | 'NOT', x: Compiled, at: number): Compiled {
  const ev = x.ev;
  if (op === '-') {
    if (x.type === 'number') return { type: 'number', ev: (m) => -(ev(m) as number) };
    if (x.type === 'value')
      return {
        type: 'value',
        ev: (m) => {
          const v = ev(m);
          return typeof v === 'number' ? -v : undefined;
        },
      };
    throw operandError(fail, at, '-', [x.type], ['number']);
  }
  switch (x.type) {
    case 'bool':
      return { type: 'bool', ev: (m) => not3(ev(m) as Tri) };
    case 'null':
      return { type: 'bool', ev: () => true }; // NOT null is true in the original
    case 'value':
      return {
        type: 'bool',
        ev: (m) => {
          const v = ev(m);
          return typeof v === 'boolean' ? !v : undefined;
        },
      };
    default:
      throw operandError(fail, at, 'NOT', [x.type], ['bool']);
  }
}

export function binary(fail: Fail, op: BinaryOp, l: Compiled, r: Compiled, at: number): Compiled {
  switch (op) {
    case 'AND':
    case 'OR':
      return logical(fail, op, l, r, at);
    case '+':
    case '-':
    case '*':
    case '/':
    case '%':
      return arithmetic(fail, op, l, r, at);
    case '||':
      return concat(fail, l, r, at);
    case '??':
      return coalesce(fail, l, r, at);
    default:
      return comparison(fail, op, l, r, at);
  }
}

/** Both sides must have the left side's type, except that a body value pairs with any scalar type. */
function sameTypeOrBody(fail: Fail, op: string, l: Compiled, r: Compiled, at: number): QType {
  if (!accepts(l.type, r.type, true)) {
    const expected =
      l.type === 'value' ? '$body value and string, number, bool, null or $body value' : [l.type, l.type];
    throw operandError(fail, at, op, [l.type, r.type], expected);
  }
  return l.type === 'value' || r.type === 'value' ? 'value' : l.type;
}

function comparison(fail: Fail, op: CompareOp, l: Compiled, r: Compiled, at: number): Compiled {
  const type = sameTypeOrBody(fail, op, l, r, at);
  const cmp = comparator(type, op);
  const [le, re] = as(type, l, r);
  return { type: 'bool', ev: (m) => cmp(le(m), re(m)) };
}

function coalesce(fail: Fail, l: Compiled, r: Compiled, at: number): Compiled {
  const type = sameTypeOrBody(fail, '??', l, r, at);
  const isDefined = definedIn(type);
  const [le, re] = as(type, l, r);
  return {
    type,
    ev: (m) => {
      const v = le(m);
      return isDefined(v) ? v : re(m);
    },
  };
}

/** Evaluators for both sides in the representation of `type` (converting scalars to body values when needed). */
function as(type: QType, l: Compiled, r: Compiled): [Eval, Eval] {
  if (type !== 'value') return [l.ev, r.ev];
  const conv = (c: Compiled): Eval => (c.type === 'value' ? c.ev : (m) => toBodyValue(c.type, c.ev(m)));
  return [conv(l), conv(r)];
}

function arithmetic(fail: Fail, op: ArithOp, l: Compiled, r: Compiled, at: number): Compiled {
  const ok = (t: QType) => t === 'number' || t === 'value';
  if (!ok(l.type) || !ok(r.type)) {
    throw operandError(fail, at, op, [l.type, r.type], ['number', 'number']);
  }
  const f = arith(op);
  const le = l.ev;
  const re = r.ev;
  if (l.type === 'number' && r.type === 'number')
    return { type: 'number', ev: (m) => f(le(m) as number, re(m) as number) };
  const [lv, rv] = as('value', l, r);
  return {
    type: 'value',
    ev: (m) => {
      const a = lv(m);
      const b = rv(m);
      if (typeof a !== 'number' || typeof b !== 'number') return undefined;
      const x = f(a, b);
      return Number.isNaN(x) ? undefined : x;
    },
  };
}

/** `a || b` is concat(a, b): strings only, no conversion of numbers; undefined if either side is. */
function concat(fail: Fail, l: Compiled, r: Compiled, at: number): Compiled {
  const ok = (t: QType) => t === 'string' || t === 'value';
  if (!ok(l.type) || !ok(r.type)) throw operandError(fail, at, '||', [l.type, r.type], ['string', 'string']);
  const [le, re] = as('value', l, r);
  return {
    type: 'string',
    ev: (m) => {
      const a = le(m);
      const b = re(m);
      return typeof a === 'string' && typeof b === 'string' ? a + b : undefined;
    },
  };
}

/**
 * AND / OR over bool, undefined, null and body values. With bools: Kleene logic. null is
 * "no value": `null AND x` is null (false as a condition), `null OR x` is x. Body values
 * must be JSON booleans, anything else makes the result undefined.
 */
function logical(fail: Fail, op: 'AND' | 'OR', l: Compiled, r: Compiled, at: number): Compiled {
  const ok = (t: QType) => t === 'bool' || t === 'undefined' || t === 'null' || t === 'value';
  if (!ok(l.type) || !ok(r.type)) throw operandError(fail, at, op, [l.type, r.type], ['bool', 'bool']);
  const le = l.ev;
  const re = r.ev;
  const f = op === 'AND' ? and3 : or3;
  if (l.type === 'value' || r.type === 'value') {
    const [lv, rv] = as('value', l, r);
    return {
      type: 'bool',
      ev: (m) => {
        const a = lv(m);
        const b = rv(m);
        return typeof a === 'boolean' && typeof b === 'boolean' ? f(a, b) : undefined;
      },
    };
  }
  if (op === 'AND' && (l.type === 'null' || r.type === 'null')) return { type: 'null', ev: () => null };
  if (op === 'OR' && l.type === 'null' && r.type === 'null') return { type: 'null', ev: () => null };
  if (op === 'OR' && l.type === 'null')
    return { type: 'bool', ev: r.type === 'bool' ? (re as (m: MessageView) => Tri) : () => undefined };
  if (op === 'OR' && r.type === 'null')
    return { type: 'bool', ev: l.type === 'bool' ? (le as (m: MessageView) => Tri) : () => undefined };
  const lb: (m: MessageView) => Tri = l.type === 'bool' ? (le as (m: MessageView) => Tri) : () => undefined;
  const rb: (m: MessageView) => Tri = r.type === 'bool' ? (re as (m: MessageView) => Tri) : () => undefined;
  return { type: 'bool', ev: (m) => f(lb(m), rb(m)) };
}
