/**
 * The condition grammar: text -> syntax tree. Meaning (types, values) lives in evaluate.ts.
 *
 * Binding, loosest to tightest (all binary operators are left-associative):
 *   ??   OR   AND   = != <>   < <= > >=   + - ||   * / %   then unary - and NOT, then primaries.
 * Unary operators bind tighter than every binary one, as in the original: `NOT a = b` is
 * `(NOT a) = b` and `-a * b` is `(-a) * b`. Primaries: ( expr ), literals, names, `$name`,
 * `{$name}`, and function calls `name(args)`.
 */
import { RouteSyntaxError } from './errors.ts';
import { describeToken, tokenize, type Token, type TokenType } from './lexer.ts';

export type BinaryOp =
  | '??'
  | 'OR'
  | 'AND'
  | '='
  | '!='
  | '<>'
  | '<'
  | '<='
  | '>'
  | '>='
  | '+'
  | '-'
  | '||'
  | '*'
  | '/'
  | '%';

export type LiteralValue =
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'number'; value: number }
  | { type: 'null' }
  | { type: 'undefined' };

export type ConditionNode =
  | { kind: 'literal'; lit: LiteralValue; start: number; end: number }
  /** A bare name: an application property. */
  | { kind: 'property'; name: string; start: number; end: number }
  /** `$name` (escaped: false) or `{$name}` (escaped: true); `name` keeps the leading `$`. */
  | { kind: 'system'; name: string; escaped: boolean; start: number; end: number }
  /** `argText` is the argument list's tokens joined without spaces: what twin_change_includes reads. */
  | { kind: 'call'; name: string; args: ConditionNode[]; argText: string; start: number; end: number }
  | { kind: 'unary'; op: '-' | 'NOT'; operand: ConditionNode; start: number; end: number }
  | {
      kind: 'binary';
      op: BinaryOp;
      left: ConditionNode;
      right: ConditionNode;
      opStart: number;
      start: number;
      end: number;
    };

const LEVELS: TokenType[][] = [
  ['??'],
  ['OR'],
  ['AND'],
  ['=', '!=', '<>'],
  ['<', '<=', '>', '>='],
  ['+', '-', '||'],
  ['*', '/', '%'],
];

/** A cursor over the tokens of one text; shared with the route parser so positions stay those of the route. */
export class TokenStream {
  private i = 0;
  /** Current nesting of expressions, bounded so hostile input cannot exhaust the stack. */
  depth = 0;

  constructor(
    readonly text: string,
    readonly tokens: Token[],
  ) {}

  static of(text: string): TokenStream {
    return new TokenStream(text, tokenize(text));
  }

  peek(ahead = 0): Token {
    return this.tokens[Math.min(this.i + ahead, this.tokens.length - 1)];
  }

  /** The token just consumed. */
  previous(): Token {
    return this.tokens[Math.max(0, this.i - 1)];
  }

  /** Index of the current token, for slicing token runs. */
  get index(): number {
    return this.i;
  }

  next(): Token {
    const t = this.peek();
    if (this.i < this.tokens.length - 1) this.i++;
    return t;
  }

  /** Fails with "expected <what>, found <token>" at the current token. */
  fail(expected: string, hint?: string): never {
    const t = this.peek();
    throw this.errorAt(t, `expected ${expected}, found ${describeToken(t)}`, {
      expected,
      hint: hint ?? hintFor(t, this.previous()),
    });
  }

  errorAt(t: Token | number, detail: string, opts: { expected?: string; hint?: string } = {}): RouteSyntaxError {
    const offset = typeof t === 'number' ? t : t.start;
    const found = typeof t === 'number' ? undefined : describeToken(t);
    return new RouteSyntaxError(this.text, offset, detail, { ...opts, found });
  }
}

function hintFor(t: Token, before?: Token): string | undefined {
  if (t.type === 'INTEGER' || t.type === 'REAL') {
    if (t.text.startsWith('-'))
      return 'a "-" written directly before a number is part of the number; put spaces around a minus operator ("a - 1")';
  }
  if (t.text === '&&' || t.text === '&' || t.text === '!') return 'the logical operators are AND, OR and NOT';
  if (t.type === '=' && before?.type === '=' && before.end === t.start)
    return '"==" is not an operator; equality is a single "="';
  return undefined;
}

/** Parses a whole condition text; an empty text is allowed and never matches (as in the original). */
export function parseCondition(text: string): ConditionNode | undefined {
  const ts = TokenStream.of(text);
  if (ts.peek().type === 'EOF') return undefined;
  const node = parseExpression(ts);
  if (ts.peek().type !== 'EOF') ts.fail('an operator or end of condition');
  return node;
}

/** Parses one expression starting at the stream's current token, stopping before the first token that cannot continue it. */
export function parseExpression(ts: TokenStream): ConditionNode {
  if (++ts.depth > MAX_DEPTH) throw ts.errorAt(ts.peek(), `expression nested more than ${MAX_DEPTH} levels deep`);
  try {
    return parseLevel(ts, 0);
  } finally {
    ts.depth--;
  }
}

const MAX_DEPTH = 200;

function parseLevel(ts: TokenStream, level: number): ConditionNode {
  if (level === LEVELS.length) return parseUnary(ts);
  let left = parseLevel(ts, level + 1);
  for (;;) {
    const t = ts.peek();
    if (!LEVELS[level].includes(t.type)) return left;
    ts.next();
    const right = parseLevel(ts, level + 1);
    left = { kind: 'binary', op: t.type as BinaryOp, left, right, opStart: t.start, start: left.start, end: right.end };
  }
}

function parseUnary(ts: TokenStream): ConditionNode {
  const t = ts.peek();
  if (t.type === '-' || t.type === 'NOT') {
    ts.next();
    if (++ts.depth > MAX_DEPTH) throw ts.errorAt(t, `expression nested more than ${MAX_DEPTH} levels deep`);
    try {
      const operand = parseUnary(ts);
      return { kind: 'unary', op: t.type === '-' ? '-' : 'NOT', operand, start: t.start, end: operand.end };
    } finally {
      ts.depth--;
    }
  }
  return parsePrimary(ts);
}

function parsePrimary(ts: TokenStream): ConditionNode {
  const t = ts.peek();
  switch (t.type) {
    case '(': {
      ts.next();
      const inner = parseExpression(ts);
      if (ts.peek().type !== ')') {
        throw ts.errorAt(
          ts.peek(),
          `expected ")" to close the "(" at position ${t.start + 1}, found ${describeToken(ts.peek())}`,
          {
            expected: '")"',
            hint: hintFor(ts.peek(), ts.previous()),
          },
        );
      }
      const close = ts.next();
      return { ...inner, start: t.start, end: close.end };
    }
    case 'TRUE':
    case 'FALSE':
      ts.next();
      return lit(t, { type: 'bool', value: t.type === 'TRUE' });
    case 'NULL':
      ts.next();
      return lit(t, { type: 'null' });
    case 'UNDEFINED':
      ts.next();
      return lit(t, { type: 'undefined' });
    case 'STRING':
      ts.next();
      return lit(t, { type: 'string', value: unescapeString(t.text.slice(1, -1)) });
    case 'UNTERMINATED_STRING':
      throw ts.errorAt(t, `unterminated string: no closing ${t.text[0]}`, {
        expected: 'a closing quote',
        hint: 'inside a string only the escapes \\" \\\' \\\\ and \\uXXXX are allowed',
      });
    case 'INTEGER':
    case 'REAL':
      ts.next();
      return numberLiteral(t, Number(t.text));
    case 'HEX':
      ts.next();
      return numberLiteral(t, parseHex(t.text.slice(2)));
    case 'SYS_PROP':
      ts.next();
      return { kind: 'system', name: t.text, escaped: false, start: t.start, end: t.end };
    case '{': {
      ts.next();
      const prop = ts.peek();
      if (prop.type !== 'SYS_PROP') ts.fail('a $name after "{"');
      ts.next();
      if (ts.peek().type !== '}') ts.fail('"}"');
      const close = ts.next();
      return { kind: 'system', name: prop.text, escaped: true, start: t.start, end: close.end };
    }
    case 'ID': {
      ts.next();
      if (ts.peek().type === '(') return parseCall(ts, t);
      return { kind: 'property', name: t.text, start: t.start, end: t.end };
    }
    case 'QUERY_PATH':
      // `-$body.a[0]`: a minus written against a body path (compiler.ts reads it as the negated value).
      if (/^-\$body\./i.test(t.text)) {
        ts.next();
        return { kind: 'property', name: t.text, start: t.start, end: t.end };
      }
      throw ts.errorAt(t, `unexpected ${describeToken(t)}: "[" and "]" may only follow $body`, {
        expected: 'an expression',
      });
    case 'UNKNOWN':
      throw ts.errorAt(t, `invalid symbol ${describeToken(t)}`, { expected: 'an expression', hint: hintFor(t) });
    default:
      return ts.fail('an expression');
  }
}

function parseCall(ts: TokenStream, nameToken: Token): ConditionNode {
  ts.next(); // '('
  const args: ConditionNode[] = [];
  const firstArgIndex = ts.index;
  if (ts.peek().type !== ')') {
    for (;;) {
      args.push(parseExpression(ts));
      if (ts.peek().type === ',') {
        ts.next();
        continue;
      }
      if (ts.peek().type === ')') break;
      throw ts.errorAt(
        ts.peek(),
        `expected "," or ")" in the arguments of ${nameToken.text}(, found ${describeToken(ts.peek())}`,
        {
          expected: '"," or ")"',
          hint: hintFor(ts.peek(), ts.previous()),
        },
      );
    }
  }
  const closeIndex = ts.index;
  const argText = ts.tokens
    .slice(firstArgIndex, closeIndex)
    .map((x) => x.text)
    .join('');
  const close = ts.next();
  return { kind: 'call', name: nameToken.text, args, argText, start: nameToken.start, end: close.end };
}

function lit(t: Token, value: LiteralValue): ConditionNode {
  return { kind: 'literal', lit: value, start: t.start, end: t.end };
}

// A number the original cannot represent (e.g. the token `e5`, or a too-long hex) is the `undefined` literal.
function numberLiteral(t: Token, n: number): ConditionNode {
  return lit(t, Number.isNaN(n) ? { type: 'undefined' } : { type: 'number', value: n });
}

/** Hex literals are read as a signed 64-bit integer, like the original (0xFFFFFFFFFFFFFFFF is -1; more than 64 bits is undefined). */
function parseHex(digitsText: string): number {
  const significant = digitsText.replace(/^0+/, '');
  if (significant.length > 16) return NaN;
  let v = BigInt('0x' + (significant || '0'));
  if (v >= 1n << 63n) v -= 1n << 64n;
  return Number(v);
}

function unescapeString(body: string): string {
  return body.replace(/\\(u[0-9a-fA-F]{4}|["'\\])/g, (_m, e: string) =>
    e.length === 5 ? String.fromCharCode(parseInt(e.slice(1), 16)) : e,
  );
}
