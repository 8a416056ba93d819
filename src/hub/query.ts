/**
 * IoT Hub's twin query language over plain twin JSON documents:
 *
 *   SELECT [TOP n] (* | item [, item]...) FROM devices | devices.modules
 *     [WHERE condition] [GROUP BY path [, path]...]
 *   item      := path [AS alias] | COUNT() [AS alias]
 *   condition := NOT, AND, OR, parentheses over predicates
 *   predicate := operand (= | != | <> | < | <= | > | >=) operand
 *              | operand [NOT] IN [v, ...] | operand NIN [v, ...]
 *              | function(...) | a bare operand (true when it is the boolean true)
 *   operand   := path (a.b.c, a['odd key'], a[0]) | 'string' | "string" | number | true | false | null
 *              | [literal, ...]
 *              | function(...)
 *   functions := IS_DEFINED IS_NULL IS_BOOL IS_NUMBER IS_STRING IS_OBJECT IS_ARRAY IS_PRIMITIVE
 *                STARTS_WITH ENDS_WITH CONTAINS ARRAY_CONTAINS ARRAY_LENGTH LOWER UPPER LENGTH
 *
 * Semantics follow the document-database rules IoT Hub inherits: a comparison involving a
 * missing property or two values of different JSON types is *undefined* (neither true nor
 * false), NOT of undefined stays undefined, and only rows whose condition is exactly true are
 * returned. So `tags.site != 'a'` does not match twins without `tags.site`; use
 * `NOT IS_DEFINED(tags.site)` for those. Keywords and function names are case-insensitive;
 * the first segment of a path falls back to a case-insensitive match (`DeviceId` finds
 * `deviceId`), deeper segments are exact.
 */

export type TwinJson = Record<string, unknown>;

export interface QuerySource {
  devices(): Iterable<TwinJson>;
  modules(): Iterable<TwinJson>;
}

/** A query that cannot be parsed or run; `position` is 1-based in the query text. */
export class QueryError extends Error {
  constructor(message: string, readonly position?: number) {
    super(message);
    this.name = 'QueryError';
  }
}

// ---------------------------------------------------------------------------------------------
// Tokens

type TokenKind = 'ident' | 'string' | 'number' | 'punct' | 'op' | 'eof';

interface Token {
  kind: TokenKind;
  /** Identifier text, decoded string, operator or punctuation. */
  text: string;
  value?: number;
  /** 0-based offset in the query. */
  pos: number;
}

const IDENT_START = /[A-Za-z_$@]/;
const IDENT_PART = /[A-Za-z0-9_$@]/;

function describeToken(t: Token): string {
  switch (t.kind) {
    case 'eof': return 'end of query';
    case 'string': return `string '${t.text}'`;
    case 'number': return `number ${t.text}`;
    default: return `'${t.text}'`;
  }
}

function tokenize(src: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (/\s/.test(c)) { i++; continue; }
    const start = i;
    if (IDENT_START.test(c)) {
      while (i < src.length && IDENT_PART.test(src[i]!)) i++;
      out.push({ kind: 'ident', text: src.slice(start, i), pos: start });
      continue;
    }
    const next = src[i + 1] ?? '';
    if (/[0-9]/.test(c) || ((c === '-' || c === '+') && /[0-9.]/.test(next)) || (c === '.' && /[0-9]/.test(next))) {
      const m = /^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?/.exec(src.slice(i))!;
      i += m[0].length;
      if (i < src.length && IDENT_PART.test(src[i]!)) {
        throw new QueryError(`syntax error at position ${start + 1}: malformed number "${src.slice(start, i + 1)}"`, start + 1);
      }
      out.push({ kind: 'number', text: m[0], value: Number(m[0]), pos: start });
      continue;
    }
    if (c === "'" || c === '"') {
      i++;
      let text = '';
      for (;;) {
        if (i >= src.length) {
          throw new QueryError(`syntax error at position ${start + 1}: string is not closed, expected a closing ${c}`, start + 1);
        }
        const ch = src[i]!;
        if (ch === '\\') {
          const esc = src[i + 1];
          if (esc === undefined) continue; // reported as unclosed on the next turn
          const map: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"', '/': '/' };
          if (esc === 'u' && /^[0-9a-fA-F]{4}$/.test(src.slice(i + 2, i + 6))) {
            text += String.fromCharCode(parseInt(src.slice(i + 2, i + 6), 16));
            i += 6;
            continue;
          }
          if (!(esc in map)) {
            throw new QueryError(`syntax error at position ${i + 1}: unknown escape "\\${esc}" in string`, i + 1);
          }
          text += map[esc];
          i += 2;
          continue;
        }
        if (ch === c) {
          // SQL style: a doubled quote stands for one quote character.
          if (src[i + 1] === c) { text += c; i += 2; continue; }
          i++;
          break;
        }
        text += ch;
        i++;
      }
      out.push({ kind: 'string', text, pos: start });
      continue;
    }
    const two = src.slice(i, i + 2);
    if (two === '!=' || two === '<>' || two === '<=' || two === '>=') {
      out.push({ kind: 'op', text: two, pos: start });
      i += 2;
      continue;
    }
    if (c === '=' || c === '<' || c === '>') {
      out.push({ kind: 'op', text: c, pos: start });
      i++;
      continue;
    }
    if ('()[],.*'.includes(c)) {
      out.push({ kind: 'punct', text: c, pos: start });
      i++;
      continue;
    }
    throw new QueryError(`syntax error at position ${start + 1}: unexpected character "${c}"`, start + 1);
  }
  out.push({ kind: 'eof', text: '', pos: src.length });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Syntax tree

type Segment = string | number;

interface PathExpr { type: 'path'; segments: Segment[]; pos: number }
interface LiteralExpr { type: 'literal'; value: unknown }
interface CallExpr { type: 'call'; name: string; args: Expr[]; pos: number }
type Expr = PathExpr | LiteralExpr | CallExpr;

type CompareOp = '=' | '!=' | '<' | '<=' | '>' | '>=';

type Cond =
  | { type: 'and' | 'or'; left: Cond; right: Cond }
  | { type: 'not'; operand: Cond }
  | { type: 'compare'; op: CompareOp; left: Expr; right: Expr }
  | { type: 'in'; negate: boolean; operand: Expr; list: unknown[] }
  | { type: 'truthy'; operand: Expr };

type SelectItem =
  | { type: 'field'; path: PathExpr; alias: string }
  | { type: 'count'; alias: string };

interface Query {
  top?: number;
  /** undefined for `*`. */
  items?: SelectItem[];
  from: 'devices' | 'modules';
  where?: Cond;
  groupBy?: PathExpr[];
}

const RESERVED = new Set(['select', 'from', 'where', 'and', 'or', 'not', 'in', 'nin', 'as', 'top', 'group', 'by', 'true', 'false', 'null']);

/** Name -> accepted argument counts. */
const FUNCTIONS: Record<string, number[]> = {
  is_defined: [1], is_null: [1], is_bool: [1], is_number: [1], is_string: [1], is_object: [1],
  is_array: [1], is_primitive: [1],
  starts_with: [2], startswith: [2], ends_with: [2], endswith: [2], contains: [2],
  array_contains: [2], array_length: [1], lower: [1], upper: [1], length: [1],
};

/**
 * How deeply a query may nest (parentheses, NOT, lists, function calls, and each AND/OR of a
 * chain, which evaluation walks as a nested tree): far past any real query, short of the stack.
 */
export const MAX_QUERY_NESTING = 200;

class Parser {
  private i = 0;
  private depth = 0;
  constructor(private readonly tokens: Token[]) {}

  /** One level deeper; the caller leaves with `this.depth--` (or `this.depth -= n` for a chain). */
  private enter(): void {
    if (++this.depth > MAX_QUERY_NESTING) {
      const at = this.tok;
      throw new QueryError(`syntax error at position ${at.pos + 1}: the condition nests more than ${MAX_QUERY_NESTING} levels deep (parentheses, NOT, lists, functions or AND/OR terms)`, at.pos + 1);
    }
  }

  private get tok(): Token { return this.tokens[this.i]!; }
  private advance(): Token { return this.tokens[this.i++]!; }

  private fail(expected: string, at: Token = this.tok): never {
    throw new QueryError(`syntax error at position ${at.pos + 1}: expected ${expected} but found ${describeToken(at)}`, at.pos + 1);
  }

  private isKeyword(word: string, t: Token = this.tok): boolean {
    return t.kind === 'ident' && t.text.toLowerCase() === word;
  }

  private acceptKeyword(word: string): boolean {
    if (!this.isKeyword(word)) return false;
    this.i++;
    return true;
  }

  private expectKeyword(word: string, expected = word.toUpperCase()): void {
    if (!this.acceptKeyword(word)) this.fail(expected);
  }

  private isPunct(p: string, t: Token = this.tok): boolean {
    return t.kind === 'punct' && t.text === p;
  }

  private expectPunct(p: string, expected = `'${p}'`): void {
    if (!this.isPunct(p)) this.fail(expected);
    this.i++;
  }

  parseQuery(): Query {
    this.expectKeyword('select');
    const q: Query = { from: 'devices' };
    if (this.acceptKeyword('top')) {
      const t = this.tok;
      if (t.kind !== 'number' || !Number.isInteger(t.value) || t.value! < 0) this.fail('a whole number after TOP');
      q.top = t.value!;
      this.i++;
    }
    if (this.isPunct('*')) {
      this.i++;
    } else {
      q.items = [this.parseSelectItem()];
      while (this.isPunct(',')) {
        this.i++;
        q.items.push(this.parseSelectItem());
      }
    }
    this.expectKeyword('from', "',' or FROM");
    if (!this.isKeyword('devices')) this.fail('devices or devices.modules');
    this.i++;
    if (this.isPunct('.')) {
      this.i++;
      if (!this.isKeyword('modules')) this.fail("'modules' after 'devices.'");
      this.i++;
      q.from = 'modules';
    }
    if (this.acceptKeyword('where')) q.where = this.parseOr();
    if (this.acceptKeyword('group')) {
      this.expectKeyword('by', 'BY after GROUP');
      q.groupBy = [this.parsePath()];
      while (this.isPunct(',')) {
        this.i++;
        q.groupBy.push(this.parsePath());
      }
    }
    if (this.tok.kind !== 'eof') {
      const what = q.groupBy ? "',' or end of query" : q.where ? 'AND, OR, GROUP BY or end of query' : 'WHERE, GROUP BY or end of query';
      this.fail(what);
    }
    return q;
  }

  private parseSelectItem(): SelectItem {
    if (this.isKeyword('count') && this.isPunct('(', this.tokens[this.i + 1])) {
      this.i += 2;
      this.expectPunct(')', "')' (COUNT takes no arguments)");
      return { type: 'count', alias: this.parseAlias() ?? '$1' };
    }
    if (this.tok.kind !== 'ident' || RESERVED.has(this.tok.text.toLowerCase())) this.fail("'*', a property path or COUNT()");
    const path = this.parsePath();
    const last = path.segments[path.segments.length - 1]!;
    return { type: 'field', path, alias: this.parseAlias() ?? String(last) };
  }

  private parseAlias(): string | undefined {
    if (!this.acceptKeyword('as')) return undefined;
    const t = this.tok;
    if (t.kind !== 'ident') this.fail('a name after AS');
    this.i++;
    return t.text;
  }

  private parsePath(): PathExpr {
    const first = this.tok;
    if (first.kind !== 'ident') this.fail('a property path');
    if (RESERVED.has(first.text.toLowerCase())) this.fail(`a property path (${first.text.toUpperCase()} is a keyword)`);
    this.i++;
    const segments: Segment[] = [first.text];
    for (;;) {
      if (this.isPunct('.')) {
        this.i++;
        const t = this.tok;
        if (t.kind !== 'ident') this.fail("a property name after '.'");
        this.i++;
        segments.push(t.text);
      } else if (this.isPunct('[')) {
        this.i++;
        const t = this.tok;
        if (t.kind === 'string') segments.push(t.text);
        else if (t.kind === 'number' && Number.isInteger(t.value) && t.value! >= 0) segments.push(t.value!);
        else this.fail("a quoted property name or an array index inside '[ ]'");
        this.i++;
        this.expectPunct(']');
      } else {
        break;
      }
    }
    return { type: 'path', segments, pos: first.pos };
  }

  private parseOr(): Cond {
    let left = this.parseAnd();
    let terms = 0;
    while (this.acceptKeyword('or')) {
      this.enter();
      terms++;
      left = { type: 'or', left, right: this.parseAnd() };
    }
    this.depth -= terms;
    return left;
  }

  private parseAnd(): Cond {
    let left = this.parseNot();
    let terms = 0;
    while (this.acceptKeyword('and')) {
      this.enter();
      terms++;
      left = { type: 'and', left, right: this.parseNot() };
    }
    this.depth -= terms;
    return left;
  }

  private parseNot(): Cond {
    if (this.acceptKeyword('not')) {
      this.enter();
      const operand = this.parseNot();
      this.depth--;
      return { type: 'not', operand };
    }
    return this.parsePredicate();
  }

  private parsePredicate(): Cond {
    if (this.isPunct('(')) {
      this.i++;
      this.enter();
      const inner = this.parseOr();
      this.expectPunct(')', "')' or AND/OR");
      this.depth--;
      return inner;
    }
    const left = this.parseOperand();
    const t = this.tok;
    if (t.kind === 'op') {
      this.i++;
      const op = (t.text === '<>' ? '!=' : t.text) as CompareOp;
      return { type: 'compare', op, left, right: this.parseOperand() };
    }
    if (this.isKeyword('in')) {
      this.i++;
      return { type: 'in', negate: false, operand: left, list: this.parseList() };
    }
    if (this.isKeyword('nin') || (this.isKeyword('not') && this.isKeyword('in', this.tokens[this.i + 1]))) {
      this.i += this.isKeyword('nin') ? 1 : 2;
      return { type: 'in', negate: true, operand: left, list: this.parseList() };
    }
    return { type: 'truthy', operand: left };
  }

  private parseList(): unknown[] {
    const open = this.tok;
    if (!this.isPunct('[') && !this.isPunct('(')) this.fail("'[' to start the list");
    const close = open.text === '[' ? ']' : ')';
    this.i++;
    this.enter();
    const values: unknown[] = [];
    if (this.isPunct(close)) {
      this.i++;
      this.depth--;
      return values;
    }
    for (;;) {
      const lit = this.parseLiteral();
      if (!lit) this.fail('a literal value in the list');
      values.push(lit.value);
      if (this.isPunct(',')) { this.i++; continue; }
      this.expectPunct(close, `',' or '${close}'`);
      this.depth--;
      return values;
    }
  }

  private parseLiteral(): LiteralExpr | undefined {
    const t = this.tok;
    if (t.kind === 'string') { this.i++; return { type: 'literal', value: t.text }; }
    if (t.kind === 'number') { this.i++; return { type: 'literal', value: t.value }; }
    if (this.isPunct('[')) return { type: 'literal', value: this.parseList() };
    if (t.kind === 'ident') {
      const w = t.text.toLowerCase();
      if (w === 'true' || w === 'false' || w === 'null') {
        this.i++;
        return { type: 'literal', value: w === 'null' ? null : w === 'true' };
      }
    }
    return undefined;
  }

  private parseOperand(): Expr {
    const lit = this.parseLiteral();
    if (lit) return lit;
    const t = this.tok;
    if (t.kind === 'ident' && this.isPunct('(', this.tokens[this.i + 1])) {
      const name = t.text.toLowerCase();
      const arity = FUNCTIONS[name];
      if (!arity) {
        throw new QueryError(`syntax error at position ${t.pos + 1}: unknown function ${t.text}()`, t.pos + 1);
      }
      this.i += 2;
      this.enter();
      const args: Expr[] = [];
      if (!this.isPunct(')')) {
        args.push(this.parseOperand());
        while (this.isPunct(',')) {
          this.i++;
          args.push(this.parseOperand());
        }
      }
      this.expectPunct(')', args.length ? "',' or ')'" : "an argument or ')'");
      this.depth--;
      if (!arity.includes(args.length)) {
        throw new QueryError(`syntax error at position ${t.pos + 1}: ${t.text.toUpperCase()}() takes ${arity.join(' or ')} argument${arity[0] === 1 ? '' : 's'}, got ${args.length}`, t.pos + 1);
      }
      if (name === 'is_defined' && args[0]!.type !== 'path') {
        throw new QueryError(`syntax error at position ${t.pos + 1}: IS_DEFINED() expects a property path`, t.pos + 1);
      }
      return { type: 'call', name, args, pos: t.pos };
    }
    if (t.kind === 'ident' && !RESERVED.has(t.text.toLowerCase())) return this.parsePath();
    return this.fail('a property path, a value or a function');
  }
}

export function parseQuery(sql: string): Query {
  if (typeof sql !== 'string' || !sql.trim()) throw new QueryError('the query is empty: expected SELECT ... FROM devices', 1);
  return new Parser(tokenize(sql)).parseQuery();
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/** Three-valued logic: undefined means "unknown" and never selects a row. */
type Truth = boolean | undefined;

function jsonType(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  const ta = jsonType(a);
  if (ta !== jsonType(b)) return false;
  if (ta === 'array') {
    const x = a as unknown[];
    const y = b as unknown[];
    return x.length === y.length && x.every((v, i) => deepEqual(v, y[i]));
  }
  if (ta === 'object') {
    const x = a as Record<string, unknown>;
    const y = b as Record<string, unknown>;
    const kx = Object.keys(x);
    return kx.length === Object.keys(y).length && kx.every((k) => Object.hasOwn(y, k) && deepEqual(x[k], y[k]));
  }
  return false;
}

function resolvePath(doc: TwinJson, segments: Segment[]): unknown {
  let cur: unknown = doc;
  segments.forEach((seg, idx) => {
    if (cur === undefined) return;
    if (typeof seg === 'number') {
      cur = Array.isArray(cur) ? cur[seg] : undefined;
      return;
    }
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) {
      cur = undefined;
      return;
    }
    const obj = cur as Record<string, unknown>;
    if (Object.hasOwn(obj, seg)) {
      cur = obj[seg];
    } else if (idx === 0) {
      const lower = seg.toLowerCase();
      const key = Object.keys(obj).find((k) => k.toLowerCase() === lower);
      cur = key === undefined ? undefined : obj[key];
    } else {
      cur = undefined;
    }
  });
  return cur;
}

function evalExpr(e: Expr, doc: TwinJson): unknown {
  switch (e.type) {
    case 'literal': return e.value;
    case 'path': return resolvePath(doc, e.segments);
    case 'call': return evalCall(e, doc);
  }
}

function evalCall(e: CallExpr, doc: TwinJson): unknown {
  const args = e.args.map((a) => evalExpr(a, doc));
  const [a, b] = args;
  switch (e.name) {
    case 'is_defined': return a !== undefined;
    case 'is_null': return a === null;
    case 'is_bool': return typeof a === 'boolean';
    case 'is_number': return typeof a === 'number';
    case 'is_string': return typeof a === 'string';
    case 'is_object': return jsonType(a) === 'object';
    case 'is_array': return Array.isArray(a);
    case 'is_primitive': return a === null || ['string', 'number', 'boolean'].includes(typeof a);
    case 'starts_with':
    case 'startswith':
      return typeof a === 'string' && typeof b === 'string' ? a.startsWith(b) : undefined;
    case 'ends_with':
    case 'endswith':
      return typeof a === 'string' && typeof b === 'string' ? a.endsWith(b) : undefined;
    case 'contains':
      return typeof a === 'string' && typeof b === 'string' ? a.includes(b) : undefined;
    case 'array_contains':
      return Array.isArray(a) && b !== undefined ? a.some((v) => deepEqual(v, b)) : undefined;
    case 'array_length': return Array.isArray(a) ? a.length : undefined;
    case 'length': return typeof a === 'string' ? a.length : undefined;
    case 'lower': return typeof a === 'string' ? a.toLowerCase() : undefined;
    case 'upper': return typeof a === 'string' ? a.toUpperCase() : undefined;
  }
  return undefined;
}

function compare(op: CompareOp, a: unknown, b: unknown): Truth {
  if (a === undefined || b === undefined) return undefined;
  const ta = jsonType(a);
  if (ta !== jsonType(b)) return undefined;
  if (op === '=') return deepEqual(a, b);
  if (op === '!=') return !deepEqual(a, b);
  if (ta !== 'number' && ta !== 'string') return undefined;
  const x = a as number | string;
  const y = b as number | string;
  switch (op) {
    case '<': return x < y;
    case '<=': return x <= y;
    case '>': return x > y;
    case '>=': return x >= y;
  }
}

function evalCond(c: Cond, doc: TwinJson): Truth {
  switch (c.type) {
    case 'and': {
      const l = evalCond(c.left, doc);
      if (l === false) return false;
      const r = evalCond(c.right, doc);
      if (r === false) return false;
      return l === undefined || r === undefined ? undefined : true;
    }
    case 'or': {
      const l = evalCond(c.left, doc);
      if (l === true) return true;
      const r = evalCond(c.right, doc);
      if (r === true) return true;
      return l === undefined || r === undefined ? undefined : false;
    }
    case 'not': {
      const v = evalCond(c.operand, doc);
      return v === undefined ? undefined : !v;
    }
    case 'compare':
      return compare(c.op, evalExpr(c.left, doc), evalExpr(c.right, doc));
    case 'in': {
      const v = evalExpr(c.operand, doc);
      if (v === undefined) return undefined;
      const found = c.list.some((x) => deepEqual(v, x));
      return c.negate ? !found : found;
    }
    case 'truthy': {
      const v = evalExpr(c.operand, doc);
      return typeof v === 'boolean' ? v : undefined;
    }
  }
}

function project(items: SelectItem[], doc: TwinJson): Record<string, unknown> {
  const row: Record<string, unknown> = {};
  for (const item of items) {
    if (item.type !== 'field') continue;
    const v = resolvePath(doc, item.path.segments);
    if (v !== undefined) row[item.alias] = v;
  }
  return row;
}

function samePath(a: PathExpr, b: PathExpr): boolean {
  return a.segments.length === b.segments.length &&
    a.segments.every((s, i) => String(s).toLowerCase() === String(b.segments[i]).toLowerCase());
}

function checkAggregates(q: Query): void {
  const items = q.items;
  if (!items) {
    if (q.groupBy) throw new QueryError(`error at position ${q.groupBy[0]!.pos + 1}: GROUP BY cannot be used with SELECT *; select the grouped properties and COUNT()`, q.groupBy[0]!.pos + 1);
    return;
  }
  const hasCount = items.some((i) => i.type === 'count');
  if (q.groupBy) {
    for (const item of items) {
      if (item.type === 'field' && !q.groupBy.some((g) => samePath(g, item.path))) {
        throw new QueryError(`error at position ${item.path.pos + 1}: property ${item.path.segments.join('.')} must appear in GROUP BY`, item.path.pos + 1);
      }
    }
  } else if (hasCount) {
    const field = items.find((i) => i.type === 'field');
    if (field && field.type === 'field') {
      throw new QueryError(`error at position ${field.path.pos + 1}: property ${field.path.segments.join('.')} cannot be selected with COUNT() without GROUP BY`, field.path.pos + 1);
    }
  }
}

/**
 * Runs a query over the twins the source yields (device twins for `FROM devices`, module twins
 * for `FROM devices.modules`). `SELECT *` returns the twin objects themselves; other selects
 * return new objects. Paging is the caller's business.
 */
export function runQuery(sql: string, source: QuerySource): object[] {
  const q = parseQuery(sql);
  checkAggregates(q);
  const docs = q.from === 'modules' ? source.modules() : source.devices();
  const limit = q.top ?? Infinity;
  const items = q.items;
  const aggregate = items?.some((i) => i.type === 'count') || q.groupBy !== undefined;

  if (!aggregate) {
    const out: object[] = [];
    if (limit === 0) return out;
    for (const doc of docs) {
      if (q.where && evalCond(q.where, doc) !== true) continue;
      out.push(items ? project(items, doc) : doc);
      if (out.length >= limit) break;
    }
    return out;
  }

  const groups = new Map<string, { sample: TwinJson; count: number }>();
  for (const doc of docs) {
    if (q.where && evalCond(q.where, doc) !== true) continue;
    const key = JSON.stringify((q.groupBy ?? []).map((g) => resolvePath(doc, g.segments) ?? { $undefined: true }));
    const g = groups.get(key);
    if (g) g.count++;
    else groups.set(key, { sample: doc, count: 1 });
  }
  // Counting nothing still answers one row, as SQL does; grouping nothing answers none.
  if (!q.groupBy && groups.size === 0) groups.set('[]', { sample: {}, count: 0 });
  const out: object[] = [];
  for (const { sample, count } of groups.values()) {
    if (out.length >= limit) break;
    const row = project(items!, sample);
    for (const item of items!) if (item.type === 'count') row[item.alias] = count;
    out.push(row);
  }
  return out;
}
