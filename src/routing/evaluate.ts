/**
 * Meaning of conditions: static types, three-valued logic, and evaluation against a message.
 *
 * Like the original, the language is statically typed. Every expression has a type known when
 * the route is compiled (string, number, bool, null, undefined, or "$body value" whose kind is
 * only known at run time), and operators check their operand types then: comparing an
 * application property (always a string) with a number, `temp > 30`, is a compile error, not a
 * false or undefined result; write `as_number(temp) > 30` or `temp > '30'` (string order).
 * Mixed-type comparisons are only possible with `$body` values (see compareValues).
 *
 * At run time a missing property, an undefined function result or NaN is undefined, and
 * undefined spreads: arithmetic and string functions give undefined, comparisons give
 * undefined, `false AND undefined` is false, `true OR undefined` is true, `NOT undefined` is
 * undefined. A route fires only when its condition is exactly true.
 */
import { parseBodyPath, type BodyValue, type PathStep } from './body-path.ts';
import { accepts, describeSignatures, findExecutor, toBodyValue, typeName, type QType, type Runtime } from './builtins.ts';
import { parseCondition, type BinaryOp, type ConditionNode } from './condition.ts';
import { RouteSyntaxError } from './errors.ts';
import { MessageView, type RoutableMessage } from './message.ts';

/** true, false, or undefined (the third value). */
export type Tri = boolean | undefined;

type Eval = (m: MessageView) => Runtime;

interface Compiled {
  type: QType;
  ev: Eval;
}

export interface CompiledCondition {
  /** The condition text, or undefined for a route without WHERE (always true). */
  readonly text: string | undefined;
  evaluate(message: RoutableMessage | MessageView): Tri;
}

export interface CompileOptions {
  /** The route's source as written (e.g. '/twinChangeNotifications'); twin_change_includes needs it. */
  source?: string;
}

/** Compiles a condition text on its own (positions in errors are within this text). */
export function compileCondition(text: string, opts: CompileOptions = {}): CompiledCondition {
  return compileConditionNode(parseCondition(text), text, text, opts);
}

/** Compiles an already parsed condition; `fullText` is what error positions refer to (the whole route). */
export function compileConditionNode(
  node: ConditionNode | undefined,
  conditionText: string | undefined,
  fullText: string,
  opts: CompileOptions = {},
): CompiledCondition {
  if (node === undefined) {
    // An empty condition is undefined (never fires), as in the original; a route without WHERE is true.
    const always: Tri = conditionText === undefined ? true : undefined;
    return { text: conditionText, evaluate: () => always };
  }
  const c = new Compiler(fullText, opts).compile(node);
  const toTri = truthOf(c.type);
  const ev = c.ev;
  return {
    text: conditionText,
    evaluate(message) {
      const view = message instanceof MessageView ? message : new MessageView(message);
      try {
        return toTri(ev(view));
      } catch {
        // Message content is untrusted; nothing in it may take the router down. Unknown -> not routed.
        return undefined;
      }
    },
  };
}

export function evaluateCondition(condition: CompiledCondition, message: RoutableMessage | MessageView): Tri {
  return condition.evaluate(message);
}

/** How a final value of each type reads as a condition: only bools (and bool body values) can be true; null is false. */
function truthOf(type: QType): (v: Runtime) => Tri {
  switch (type) {
    case 'bool':
      return (v) => v as Tri;
    case 'null':
      return () => false;
    case 'value':
      return (v) => (typeof v === 'boolean' ? v : undefined);
    default:
      return () => undefined;
  }
}

// ---- three-valued logic ----

export function and3(a: Tri, b: Tri): Tri {
  if (a === false || b === false) return false;
  if (a === undefined || b === undefined) return undefined;
  return true;
}

export function or3(a: Tri, b: Tri): Tri {
  if (a === true || b === true) return true;
  if (a === undefined || b === undefined) return undefined;
  return false;
}

export function not3(a: Tri): Tri {
  return a === undefined ? undefined : !a;
}

// ---- comparisons ----

type CompareOp = '=' | '!=' | '<>' | '<' | '<=' | '>' | '>=';

function verdict(op: CompareOp, c: number): boolean {
  switch (op) {
    case '=':
      return c === 0;
    case '!=':
    case '<>':
      return c !== 0;
    case '<':
      return c < 0;
    case '<=':
      return c <= 0;
    case '>':
      return c > 0;
    case '>=':
      return c >= 0;
  }
}

const order = (a: number | string, b: number | string) => (a < b ? -1 : a > b ? 1 : 0);

// Kinds of body values in the original's order; values of different kinds compare by this order.
function kindRank(v: Exclude<BodyValue, undefined>): number {
  switch (typeof v) {
    case 'boolean':
      return 1;
    case 'number':
      return 2;
    case 'string':
      return 3;
    default:
      return 4; // null, MISSING
  }
}

/**
 * Compares two body values (a scalar compared with a body value is converted to one first).
 * Undefined on either side gives undefined. Values of different kinds are never equal and are
 * ordered bool < number < string < null, as in the original: `$body.temp = '50'` is false when
 * temp is the number 50, and `$body.temp <> '50'` is true. There is no implicit conversion.
 */
export function compareValues(op: CompareOp, a: BodyValue, b: BodyValue): Tri {
  if (a === undefined || b === undefined) return undefined;
  const ra = kindRank(a);
  const rb = kindRank(b);
  if (ra !== rb) return verdict(op, ra - rb);
  if (ra === 4) return verdict(op, 0);
  if (ra === 1) return verdict(op, Number(a) - Number(b));
  return verdict(op, order(a as number | string, b as number | string));
}

function comparator(type: QType, op: CompareOp): (a: Runtime, b: Runtime) => Tri {
  switch (type) {
    case 'string':
      return (a, b) => (a === undefined || b === undefined ? undefined : verdict(op, order(a as string, b as string)));
    case 'number':
      return (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? undefined : verdict(op, order(a as number, b as number)));
    case 'bool':
      return (a, b) => (a === undefined || b === undefined ? undefined : verdict(op, Number(a) - Number(b)));
    case 'null': {
      const r = op === '=' || op === '<=' || op === '>=';
      return () => r;
    }
    case 'undefined':
      return () => undefined;
    case 'value':
      return (a, b) => compareValues(op, a as BodyValue, b as BodyValue);
  }
}

function definedIn(type: QType): (v: Runtime) => boolean {
  switch (type) {
    case 'number':
      return (v) => !Number.isNaN(v);
    case 'null':
      return () => true;
    case 'undefined':
      return () => false;
    default:
      return (v) => v !== undefined;
  }
}

// ---- arithmetic ----

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

// ---- compiler ----

const MAX_COMPILE_DEPTH = 500;

const TWIN_PATH_PREFIXES = ['properties.reported.', 'properties.desired.', 'tags.'];

class Compiler {
  constructor(
    private readonly text: string,
    private readonly opts: CompileOptions,
  ) {}

  private error(at: number, detail: string, hint?: string): RouteSyntaxError {
    return new RouteSyntaxError(this.text, at, detail, { hint });
  }

  private depth = 0;

  compile(n: ConditionNode): Compiled {
    // Long operator chains nest as deeply as parentheses do; bound both compile and evaluation stacks.
    if (++this.depth > MAX_COMPILE_DEPTH) throw this.error(n.start, `condition too complex: more than ${MAX_COMPILE_DEPTH} nested operations`);
    try {
      return this.compileNode(n);
    } finally {
      this.depth--;
    }
  }

  private compileNode(n: ConditionNode): Compiled {
    switch (n.kind) {
      case 'literal': {
        const lit = n.lit;
        switch (lit.type) {
          case 'null':
            return { type: 'null', ev: () => null };
          case 'undefined':
            return { type: 'undefined', ev: () => undefined };
          default: {
            const v = lit.value;
            return { type: lit.type, ev: () => v };
          }
        }
      }
      case 'property':
        return this.property(n.name, n.start);
      case 'system':
        return this.system(n.name, n.escaped, n.start);
      case 'call':
        return this.call(n);
      case 'unary':
        return this.unary(n.op, this.compile(n.operand), n.start);
      case 'binary':
        return this.binary(n.op, this.compile(n.left), this.compile(n.right), n.opStart);
    }
  }

  /**
   * `$name`: the application property literally named `$name` if the message has one, else the
   * system property `name`. `{$name}`: always the system property. `$body.path` (prefix in any
   * case) reads the body; an application property named `$body.path` still wins unless escaped.
   * Names with [ ] that are not body queries are undefined.
   */
  private system(name: string, escaped: boolean, at: number): Compiled {
    let body: PathStep[] | undefined;
    if (name.toLowerCase().startsWith('$body.')) {
      const parsed = parseBodyPath(name.slice('$body.'.length));
      if (typeof parsed === 'string') throw this.error(at, parsed);
      body = parsed;
    }
    if (body !== undefined) {
      const steps = body;
      if (escaped || name.includes('[') || name.includes(']')) return { type: 'value', ev: (m) => m.bodyValue(steps) };
      return {
        type: 'value',
        ev: (m) => {
          const app = m.app(name);
          return app !== undefined ? app : m.bodyValue(steps);
        },
      };
    }
    if (name.includes('[') || name.includes(']')) return { type: 'undefined', ev: () => undefined };
    const sysName = name.slice(1);
    if (escaped) return { type: 'string', ev: (m) => m.system(sysName) };
    return {
      type: 'string',
      ev: (m) => {
        const app = m.app(name);
        return app !== undefined ? app : m.system(sysName);
      },
    };
  }

  /**
   * A bare name reads the application property. The lexer keeps a "-" written directly before a
   * name inside the name, as the original's does, so `-$body.hum` is one token. Read only as a
   * property it would be a string, and `-$body.hum = -40` would not compile; so, like `$body.x`
   * itself, it reads the application property of that literal name when the message has one,
   * else the negated body value (a number operation on a value typed at run time).
   */
  private property(name: string, at: number): Compiled {
    if (/^-\$body\./i.test(name)) {
      const steps = parseBodyPath(name.slice('-$body.'.length));
      if (typeof steps === 'string') throw this.error(at, steps);
      return {
        type: 'value',
        ev: (m) => {
          const app = m.app(name);
          if (app !== undefined) return app;
          const v = m.bodyValue(steps);
          return typeof v === 'number' ? -v : undefined;
        },
      };
    }
    return { type: 'string', ev: (m) => m.app(name) };
  }

  private call(n: Extract<ConditionNode, { kind: 'call' }>): Compiled {
    const fname = n.name.toLowerCase();
    if (fname === 'twin_change_includes') return this.twinChangeIncludes(n);
    const args = n.args.map((a) => this.compile(a));
    const types = args.map((a) => a.type);
    const exec = findExecutor(fname, types);
    if (exec === undefined) {
      const known = describeSignatures(fname);
      if (known === '') throw this.error(n.start, `unknown function "${n.name}"`, 'see the route language functions: abs, exp, power, square, ceiling, floor, sign, sqrt, as_number, is_bool, is_defined, is_null, is_number, is_string, concat, length, lower, upper, substring, index_of, starts_with, ends_with, contains, twin_change_includes');
      throw this.error(
        n.start,
        `invalid arguments to function "${n.name}": ${fname}(${types.map(typeName).join(', ')}); expected ${known}`,
        types.includes('string') && known.includes('number') ? 'application and system properties are strings; convert with as_number(...)' : undefined,
      );
    }
    const evs = args.map((a) => a.ev);
    const run = exec.run;
    if (exec.sig.kind === 'any') return { type: exec.result, ev: () => run([]) };
    const convert = exec.sig.body;
    if (!convert) return { type: exec.result, ev: (m) => run(evs.map((e) => e(m))) };
    return { type: exec.result, ev: (m) => run(evs.map((e, i) => toBodyValue(types[i], e(m)))) };
  }

  /**
   * twin_change_includes(properties.reported.x): true when the twin change notification's body
   * contains the path (an object or null counts), false when it does not, undefined when the
   * body cannot be read. Its argument is a path, not an expression.
   */
  private twinChangeIncludes(n: Extract<ConditionNode, { kind: 'call' }>): Compiled {
    const src = this.opts.source?.trim().replace(/\*+$/, '').replace(/\/+$/, '').toLowerCase();
    if (src !== '/twinchangenotifications') {
      throw this.error(n.start, `twin_change_includes can only be used in routes FROM /twinChangeNotifications`);
    }
    const path = n.argText;
    if (path === '') throw this.error(n.start, 'twin_change_includes needs a path argument, e.g. twin_change_includes(properties.reported.x)');
    const steps = parseBodyPath(path);
    if (typeof steps === 'string') throw this.error(n.start, `twin_change_includes: ${steps.replace('$body path', 'path')}`);
    if (!TWIN_PATH_PREFIXES.some((p) => path.toLowerCase().startsWith(p))) {
      throw this.error(n.start, `twin_change_includes: "${path}" is not supported; the path must start with ${TWIN_PATH_PREFIXES.map((p) => `"${p}"`).join(', ')}`);
    }
    return { type: 'bool', ev: (m) => m.bodyHas(steps) };
  }

  private unary(op: '-' | 'NOT', x: Compiled, at: number): Compiled {
    const ev = x.ev;
    if (op === '-') {
      if (x.type === 'number') return { type: 'number', ev: (m) => -(ev(m) as number) };
      if (x.type === 'value') return { type: 'value', ev: (m) => { const v = ev(m); return typeof v === 'number' ? -v : undefined; } };
      throw this.operandError(at, '-', [x.type], ['number']);
    }
    switch (x.type) {
      case 'bool':
        return { type: 'bool', ev: (m) => not3(ev(m) as Tri) };
      case 'null':
        return { type: 'bool', ev: () => true }; // NOT null is true in the original
      case 'value':
        return { type: 'bool', ev: (m) => { const v = ev(m); return typeof v === 'boolean' ? !v : undefined; } };
      default:
        throw this.operandError(at, 'NOT', [x.type], ['bool']);
    }
  }

  private operandError(at: number, op: string, have: QType[], expected: QType[] | string): RouteSyntaxError {
    const arity = have.length === 1 ? 'unary' : 'binary';
    const names = (ts: QType[] | string) => (typeof ts === 'string' ? ts : ts.map(typeName).join(' and '));
    let hint: string | undefined;
    if (have.includes('string') && have.includes('number')) {
      hint = 'application and system properties are strings: compare with a string literal, or convert with as_number(name)';
    } else if (have.includes('undefined')) {
      hint = 'use is_defined(...) to test for undefined';
    } else if (op === '+' && have.every((t) => t === 'string')) {
      hint = 'use || or concat(...) to join strings';
    }
    return this.error(at, `invalid operands to ${arity} operator "${op}": have ${names(have)}, expected ${names(expected)}`, hint);
  }

  private binary(op: BinaryOp, l: Compiled, r: Compiled, at: number): Compiled {
    switch (op) {
      case 'AND':
      case 'OR':
        return this.logical(op, l, r, at);
      case '+':
      case '-':
      case '*':
      case '/':
      case '%':
        return this.arithmetic(op, l, r, at);
      case '||':
        return this.concat(l, r, at);
      case '??':
        return this.coalesce(l, r, at);
      default:
        return this.comparison(op, l, r, at);
    }
  }

  /** Both sides must have the left side's type, except that a body value pairs with any scalar type. */
  private sameTypeOrBody(op: string, l: Compiled, r: Compiled, at: number): QType {
    if (!accepts(l.type, r.type, true)) {
      const expected = l.type === 'value' ? '$body value and string, number, bool, null or $body value' : [l.type, l.type];
      throw this.operandError(at, op, [l.type, r.type], expected);
    }
    return l.type === 'value' || r.type === 'value' ? 'value' : l.type;
  }

  private comparison(op: CompareOp, l: Compiled, r: Compiled, at: number): Compiled {
    const type = this.sameTypeOrBody(op, l, r, at);
    const cmp = comparator(type, op);
    const [le, re] = this.as(type, l, r);
    return { type: 'bool', ev: (m) => cmp(le(m), re(m)) };
  }

  private coalesce(l: Compiled, r: Compiled, at: number): Compiled {
    const type = this.sameTypeOrBody('??', l, r, at);
    const isDefined = definedIn(type);
    const [le, re] = this.as(type, l, r);
    return {
      type,
      ev: (m) => {
        const v = le(m);
        return isDefined(v) ? v : re(m);
      },
    };
  }

  /** Evaluators for both sides in the representation of `type` (converting scalars to body values when needed). */
  private as(type: QType, l: Compiled, r: Compiled): [Eval, Eval] {
    if (type !== 'value') return [l.ev, r.ev];
    const conv = (c: Compiled): Eval => (c.type === 'value' ? c.ev : (m) => toBodyValue(c.type, c.ev(m)));
    return [conv(l), conv(r)];
  }

  private arithmetic(op: ArithOp, l: Compiled, r: Compiled, at: number): Compiled {
    const ok = (t: QType) => t === 'number' || t === 'value';
    if (!ok(l.type) || !ok(r.type)) {
      throw this.operandError(at, op, [l.type, r.type], ['number', 'number']);
    }
    const f = arith(op);
    const le = l.ev;
    const re = r.ev;
    if (l.type === 'number' && r.type === 'number') return { type: 'number', ev: (m) => f(le(m) as number, re(m) as number) };
    const [lv, rv] = this.as('value', l, r);
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
  private concat(l: Compiled, r: Compiled, at: number): Compiled {
    const ok = (t: QType) => t === 'string' || t === 'value';
    if (!ok(l.type) || !ok(r.type)) throw this.operandError(at, '||', [l.type, r.type], ['string', 'string']);
    const [le, re] = this.as('value', l, r);
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
  private logical(op: 'AND' | 'OR', l: Compiled, r: Compiled, at: number): Compiled {
    const ok = (t: QType) => t === 'bool' || t === 'undefined' || t === 'null' || t === 'value';
    if (!ok(l.type) || !ok(r.type)) throw this.operandError(at, op, [l.type, r.type], ['bool', 'bool']);
    const le = l.ev;
    const re = r.ev;
    const f = op === 'AND' ? and3 : or3;
    if (l.type === 'value' || r.type === 'value') {
      const [lv, rv] = this.as('value', l, r);
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
    if (op === 'OR' && l.type === 'null') return { type: 'bool', ev: r.type === 'bool' ? (re as (m: MessageView) => Tri) : () => undefined };
    if (op === 'OR' && r.type === 'null') return { type: 'bool', ev: l.type === 'bool' ? (le as (m: MessageView) => Tri) : () => undefined };
    const lb: (m: MessageView) => Tri = l.type === 'bool' ? (le as (m: MessageView) => Tri) : () => undefined;
    const rb: (m: MessageView) => Tri = r.type === 'bool' ? (re as (m: MessageView) => Tri) : () => undefined;
    return { type: 'bool', ev: (m) => f(lb(m), rb(m)) };
  }
}

