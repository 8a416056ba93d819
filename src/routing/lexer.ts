/**
 * Tokenizer for the route language.
 *
 * It reproduces the original's lexer exactly, because that is where several surprises of the
 * language come from: at each position the longest token wins, and among equally long ones the
 * rule listed first. Names may contain characters such as `-+*%!|.$'`, so `a+1`, `3-2` and
 * `temp*2` are single names (write `a + 1`); `-5` is one number token, so `3 -5` is two numbers
 * and a syntax error; `e5` is an (invalid) number; `true`/`false`/`null`/`undefined` are
 * lower-case only (`TRUE` is a property name) while SELECT/FROM/WHERE/INTO/AND/OR/NOT are
 * case-insensitive. `$body.a[0]` is one token; a bare `a[0]` is a path token the parser rejects.
 */

export type TokenType =
  | '{'
  | '}'
  | 'SELECT'
  | 'FROM'
  | 'WHERE'
  | 'INTO'
  | 'STRING'
  | 'UNTERMINATED_STRING'
  | 'INTEGER'
  | 'HEX'
  | 'REAL'
  | 'TRUE'
  | 'FALSE'
  | 'NULL'
  | 'UNDEFINED'
  | '('
  | ')'
  | ','
  | '+'
  | '-'
  | '*'
  | '/'
  | '%'
  | 'AND'
  | 'OR'
  | 'NOT'
  | '='
  | '!='
  | '<>'
  | '<='
  | '>='
  | '>'
  | '<'
  | '||'
  | '??'
  | 'SYS_PROP'
  | 'ID'
  | 'QUERY_PATH'
  | 'WS'
  | 'COMMENT'
  | 'UNKNOWN'
  | 'EOF';

export interface Token {
  type: TokenType;
  text: string;
  /** 0-based offset of the first character. */
  start: number;
  /** 0-based offset just past the last character. */
  end: number;
}

type Matcher = (s: string, i: number) => number;

const isDigit = (c: number) => c >= 48 && c <= 57;
const isHex = (c: number) => isDigit(c) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);

// Characters that end a name. `[` and `]` end a plain name but not a `$`-path.
const PATH_STOP = new Set(Array.from('()<>@,;:\\"/?={} \t\n\r', (ch) => ch.charCodeAt(0)));
const NAME_STOP = new Set([...PATH_STOP, '['.charCodeAt(0), ']'.charCodeAt(0)]);

function run(stop: Set<number>): Matcher {
  return (s, i) => {
    let j = i;
    while (j < s.length && !stop.has(s.charCodeAt(j))) j++;
    return j - i;
  };
}

function literal(lit: string): Matcher {
  return (s, i) => (s.startsWith(lit, i) ? lit.length : 0);
}

function keyword(word: string): Matcher {
  return (s, i) =>
    s.length - i >= word.length && s.slice(i, i + word.length).toUpperCase() === word ? word.length : 0;
}

function digits(s: string, i: number): number {
  let j = i;
  while (j < s.length && isDigit(s.charCodeAt(j))) j++;
  return j - i;
}

/** [eE] [+-]? [0-9]+ */
function exponent(s: string, i: number): number {
  const c = s.charCodeAt(i);
  if (c !== 101 && c !== 69) return 0;
  let j = i + 1;
  if (s[j] === '+' || s[j] === '-') j++;
  const d = digits(s, j);
  return d === 0 ? 0 : j + d - i;
}

const integer: Matcher = (s, i) => {
  const j = s[i] === '-' ? i + 1 : i;
  const d = digits(s, j);
  return d === 0 ? 0 : j + d - i;
};

const hex: Matcher = (s, i) => {
  if (s[i] !== '0' || (s[i + 1] !== 'x' && s[i + 1] !== 'X')) return 0;
  let j = i + 2;
  while (j < s.length && isHex(s.charCodeAt(j))) j++;
  return j === i + 2 ? 0 : j - i;
};

// '-'? [0-9]* '.' [0-9]+ EXP?  |  '-'? [0-9]* EXP
const real: Matcher = (s, i) => {
  let j = s[i] === '-' ? i + 1 : i;
  j += digits(s, j);
  let best = 0;
  if (s[j] === '.') {
    const f = digits(s, j + 1);
    if (f > 0) {
      const k = j + 1 + f;
      best = k + exponent(s, k) - i;
    }
  }
  const e = exponent(s, j);
  if (e > 0) best = Math.max(best, j + e - i);
  return best;
};

/** Quoted string with \" \' \\ \uXXXX escapes; `complete` selects the terminated or the unterminated rule. */
function quoted(complete: boolean): Matcher {
  return (s, i) => {
    const q = s[i];
    if (q !== '"' && q !== "'") return 0;
    let j = i + 1;
    while (j < s.length) {
      const c = s[j];
      if (c === q) return complete ? j + 1 - i : j - i;
      if (c === '\\') {
        const n = s[j + 1];
        if (n === '"' || n === "'" || n === '\\') j += 2;
        else if (n === 'u' && [2, 3, 4, 5].every((k) => j + k < s.length && isHex(s.charCodeAt(j + k)))) j += 6;
        else return complete ? 0 : j - i;
      } else j++;
    }
    return complete ? 0 : j - i;
  };
}

const sysProp: Matcher = (s, i) => {
  if (s[i] !== '$') return 0;
  const n = run(PATH_STOP)(s, i + 1);
  return n === 0 ? 0 : n + 1;
};

const whitespace: Matcher = (s, i) => {
  let j = i;
  while (j < s.length && (s[j] === ' ' || s[j] === '\t' || s[j] === '\r' || s[j] === '\n')) j++;
  return j - i;
};

const comment: Matcher = (s, i) => {
  if (!s.startsWith('/*', i)) return 0;
  const close = s.indexOf('*/', i + 2);
  return close < 0 ? 0 : close + 2 - i;
};

// Order matters: on equal length the earlier rule wins (as in the original grammar).
const RULES: Array<[TokenType, Matcher]> = [
  ['{', literal('{')],
  ['}', literal('}')],
  ['SELECT', keyword('SELECT')],
  ['FROM', keyword('FROM')],
  ['WHERE', keyword('WHERE')],
  ['INTO', keyword('INTO')],
  ['STRING', quoted(true)],
  ['UNTERMINATED_STRING', quoted(false)],
  ['INTEGER', integer],
  ['HEX', hex],
  ['REAL', real],
  ['TRUE', literal('true')],
  ['FALSE', literal('false')],
  ['NULL', literal('null')],
  ['UNDEFINED', literal('undefined')],
  ['(', literal('(')],
  [')', literal(')')],
  [',', literal(',')],
  ['+', literal('+')],
  ['-', literal('-')],
  ['*', literal('*')],
  ['/', literal('/')],
  ['%', literal('%')],
  ['AND', keyword('AND')],
  ['OR', keyword('OR')],
  ['NOT', keyword('NOT')],
  ['=', literal('=')],
  ['!=', literal('!=')],
  ['<>', literal('<>')],
  ['<=', literal('<=')],
  ['>=', literal('>=')],
  ['>', literal('>')],
  ['<', literal('<')],
  ['||', literal('||')],
  ['??', literal('??')],
  ['SYS_PROP', sysProp],
  ['ID', run(NAME_STOP)],
  ['QUERY_PATH', run(PATH_STOP)],
  ['WS', whitespace],
  ['COMMENT', comment],
];

/** Every token including whitespace and comments, ending with one EOF token. */
export function tokenizeAll(text: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < text.length) {
    let bestType: TokenType = 'UNKNOWN';
    let bestLen = 0;
    for (const [type, match] of RULES) {
      const n = match(text, i);
      if (n > bestLen) {
        bestLen = n;
        bestType = type;
      }
    }
    if (bestLen === 0) bestLen = 1; // a character no rule accepts becomes an UNKNOWN token for the parser to report
    out.push({ type: bestType, text: text.slice(i, i + bestLen), start: i, end: i + bestLen });
    i += bestLen;
  }
  out.push({ type: 'EOF', text: '', start: text.length, end: text.length });
  return out;
}

/** The tokens the parser sees: whitespace and comments dropped. */
export function tokenize(text: string): Token[] {
  return tokenizeAll(text).filter((t) => t.type !== 'WS' && t.type !== 'COMMENT');
}

/** How a token is shown in an error message. */
export function describeToken(t: Token): string {
  return t.type === 'EOF' ? 'end of input' : JSON.stringify(t.text);
}
