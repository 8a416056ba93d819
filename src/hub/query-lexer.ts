/** The twin query language's tokens (grammar in query.ts), and the error every stage throws. */

/** A query that cannot be parsed or run; `position` is 1-based in the query text. */
export class QueryError extends Error {
  constructor(
    message: string,
    readonly position?: number,
  ) {
    super(message);
    this.name = 'QueryError';
  }
}

type TokenKind = 'ident' | 'string' | 'number' | 'punct' | 'op' | 'eof';

export interface Token {
  kind: TokenKind;
  /** Identifier text, decoded string, operator or punctuation. */
  text: string;
  value?: number;
  /** 0-based offset in the query. */
  pos: number;
}

const IDENT_START = /[A-Za-z_$@]/;
const IDENT_PART = /[A-Za-z0-9_$@]/;

export function describeToken(t: Token): string {
  switch (t.kind) {
    case 'eof':
      return 'end of query';
    case 'string':
      return `string '${t.text}'`;
    case 'number':
      return `number ${t.text}`;
    default:
      return `'${t.text}'`;
  }
}

export function tokenize(src: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
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
        throw new QueryError(
          `syntax error at position ${start + 1}: malformed number "${src.slice(start, i + 1)}"`,
          start + 1,
        );
      }
      out.push({ kind: 'number', text: m[0], value: Number(m[0]), pos: start });
      continue;
    }
    if (c === "'" || c === '"') {
      i++;
      let text = '';
      for (;;) {
        if (i >= src.length) {
          throw new QueryError(
            `syntax error at position ${start + 1}: string is not closed, expected a closing ${c}`,
            start + 1,
          );
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
          if (src[i + 1] === c) {
            text += c;
            i += 2;
            continue;
          }
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
