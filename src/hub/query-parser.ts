/** The twin query language's syntax tree and its parser (the grammar is in query.ts). */
import { QueryError, describeToken, tokenize, type Token } from './query-lexer.ts';

export type Segment = string | number;

export interface PathExpr {
  type: 'path';
  segments: Segment[];
  pos: number;
}
export interface LiteralExpr {
  type: 'literal';
  value: unknown;
}
export interface CallExpr {
  type: 'call';
  name: string;
  args: Expr[];
  pos: number;
}
export type Expr = PathExpr | LiteralExpr | CallExpr;

export type CompareOp = '=' | '!=' | '<' | '<=' | '>' | '>=';

export type Cond =
  | { type: 'and' | 'or'; left: Cond; right: Cond }
  | { type: 'not'; operand: Cond }
  | { type: 'compare'; op: CompareOp; left: Expr; right: Expr }
  | { type: 'in'; negate: boolean; operand: Expr; list: unknown[] }
  | { type: 'truthy'; operand: Expr };

export type SelectItem = { type: 'field'; path: PathExpr; alias: string } | { type: 'count'; alias: string };

export interface Query {
  top?: number;
  /** undefined for `*`. */
  items?: SelectItem[];
  from: 'devices' | 'modules';
  where?: Cond;
  groupBy?: PathExpr[];
}

const RESERVED = new Set([
  'select',
  'from',
  'where',
  'and',
  'or',
  'not',
  'in',
  'nin',
  'as',
  'top',
  'group',
  'by',
  'true',
  'false',
  'null',
]);

/** Name -> accepted argument counts. */
const FUNCTIONS: Record<string, number[]> = {
  is_defined: [1],
  is_null: [1],
  is_bool: [1],
  is_number: [1],
  is_string: [1],
  is_object: [1],
  is_array: [1],
  is_primitive: [1],
  starts_with: [2],
  startswith: [2],
  ends_with: [2],
  endswith: [2],
  contains: [2],
  array_contains: [2],
  array_length: [1],
  lower: [1],
  upper: [1],
  length: [1],
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
      throw new QueryError(
        `syntax error at position ${at.pos + 1}: the condition nests more than ${MAX_QUERY_NESTING} levels deep (parentheses, NOT, lists, functions or AND/OR terms)`,
        at.pos + 1,
      );
    }
  }

  private get tok(): Token {
    return this.tokens[this.i]!;
  }

  private fail(expected: string, at: Token = this.tok): never {
    throw new QueryError(
      `syntax error at position ${at.pos + 1}: expected ${expected} but found ${describeToken(at)}`,
      at.pos + 1,
    );
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
      const what = q.groupBy
        ? "',' or end of query"
        : q.where
          ? 'AND, OR, GROUP BY or end of query'
          : 'WHERE, GROUP BY or end of query';
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
    if (this.tok.kind !== 'ident' || RESERVED.has(this.tok.text.toLowerCase()))
      this.fail("'*', a property path or COUNT()");
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
      if (this.isPunct(',')) {
        this.i++;
        continue;
      }
      this.expectPunct(close, `',' or '${close}'`);
      this.depth--;
      return values;
    }
  }

  private parseLiteral(): LiteralExpr | undefined {
    const t = this.tok;
    if (t.kind === 'string') {
      this.i++;
      return { type: 'literal', value: t.text };
    }
    if (t.kind === 'number') {
      this.i++;
      return { type: 'literal', value: t.value };
    }
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
        throw new QueryError(
          `syntax error at position ${t.pos + 1}: ${t.text.toUpperCase()}() takes ${arity.join(' or ')} argument${arity[0] === 1 ? '' : 's'}, got ${args.length}`,
          t.pos + 1,
        );
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
  if (typeof sql !== 'string' || !sql.trim())
    throw new QueryError('the query is empty: expected SELECT ... FROM devices', 1);
  return new Parser(tokenize(sql)).parseQuery();
}
