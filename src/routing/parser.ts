/**
 * Route statements: `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>`.
 *
 * Keywords are case-insensitive. Sources are paths such as /messages/*,
 * /messages/modules/{mid}/outputs/{output}, /messages/modules/{mid}/*, /twinChangeNotifications
 * or /*; a source matches a message whose source starts with it, case-insensitively, after a
 * trailing `*` and `/` are trimmed (so /messages/* also takes every module output). Sinks are
 * `$upstream` and `BrokeredEndpoint("/modules/{mid}/inputs/{input}")`.
 *
 * Differences from the original, all about text the original accepted by accident: anything
 * after the sink is an error (the original ignored it), and a path segment may be a word the
 * lexer reads as a keyword or number (a module named `123` or `into`) when written right after
 * its "/".
 */
import { parseExpression, TokenStream } from './condition.ts';
import { parseBrokeredAddress, UPSTREAM, type Endpoint } from './endpoint.ts';
import { RouteSyntaxError } from './errors.ts';
import { compileConditionNode, type CompiledCondition } from './evaluate.ts';
import { describeToken } from './lexer.ts';

export interface ParsedRoute {
  /** The route as written. */
  readonly text: string;
  /** The source path as written, without spaces, e.g. '/messages/*'. */
  readonly source: string;
  /** The normalised prefix messages are matched against, e.g. '/messages/'. */
  readonly sourcePrefix: string;
  /** The WHERE condition (compiled); always true without WHERE. */
  readonly condition: CompiledCondition;
  readonly endpoint: Endpoint;
}

// Tokens that may serve as a path segment when written directly after "/": words the lexer
// classifies as keywords or numbers but are plain names in a path.
const WORDLIKE = new Set([
  'SELECT',
  'FROM',
  'WHERE',
  'INTO',
  'AND',
  'OR',
  'NOT',
  'TRUE',
  'FALSE',
  'NULL',
  'UNDEFINED',
  'INTEGER',
  'HEX',
  'REAL',
]);

export function parseRoute(text: string): ParsedRoute {
  const ts = TokenStream.of(text);
  if (ts.peek().type === 'EOF')
    throw new RouteSyntaxError(text, 0, 'empty route', {
      expected: 'FROM',
      hint: 'a route reads FROM <source> [WHERE <condition>] INTO <sink>',
    });

  const select = ts.peek().type === 'SELECT';
  if (select) {
    ts.next();
    if (ts.peek().type !== '*') ts.fail('"*" after SELECT');
    ts.next();
  }
  if (ts.peek().type !== 'FROM') ts.fail(select ? 'FROM' : 'SELECT or FROM');
  ts.next();

  const source = parseSource(ts);

  let condition: CompiledCondition;
  if (ts.peek().type === 'WHERE') {
    ts.next();
    const first = ts.peek();
    if (first.type === 'INTO' || first.type === 'EOF') ts.fail('a condition after WHERE');
    const node = parseExpression(ts);
    const last = ts.previous();
    if (ts.peek().type !== 'INTO') ts.fail('INTO');
    const conditionText = text.slice(first.start, last.end);
    condition = compileConditionNode(node, conditionText, text, { source: source.text });
  } else {
    if (ts.peek().type !== 'INTO') ts.fail('WHERE or INTO');
    condition = compileConditionNode(undefined, undefined, text);
  }
  ts.next(); // INTO

  const endpoint = parseSink(ts);
  if (ts.peek().type !== 'EOF') ts.fail('end of route');

  return { text, source: source.text, sourcePrefix: sourcePrefix(source.text), condition, endpoint };
}

function parseSource(ts: TokenStream): { text: string } {
  if (ts.peek().type !== '/') ts.fail('a source path such as /messages/*');
  const first = ts.peek();
  let out = '';
  while (ts.peek().type === '/') {
    const slash = ts.next();
    const seg = ts.peek();
    const adjacent = seg.start === slash.end;
    if (seg.type === '*' || seg.type === 'ID' || (adjacent && WORDLIKE.has(seg.type))) {
      ts.next();
      out += '/' + seg.text;
    } else {
      ts.fail('a path segment ("*" or a name) after "/"');
    }
  }
  const problem = sourceProblem(out);
  if (problem)
    throw ts.errorAt(first, `source "${out}" ${problem}`, { expected: 'a message source', hint: SOURCES_HINT });
  return { text: out };
}

const SOURCES_HINT =
  'sources are /messages/* (all telemetry), /messages/modules/<module>/outputs/<output> (or /*), /twinChangeNotifications and /*';

/**
 * Why a source can never match a message, or undefined. Messages come from `/messages`,
 * `/messages/modules/{m}/outputs/{o}` and `/twinChangeNotifications`; a route from anywhere
 * else would silently take nothing, so it is refused (the original accepted it).
 */
export function sourceProblem(source: string): string | undefined {
  const segs = source.split('/').slice(1);
  const star = segs.indexOf('*');
  if (star >= 0 && star !== segs.length - 1) return 'has "*" before its end; "*" may only be the last segment';
  const path = star >= 0 ? segs.slice(0, -1) : segs;
  const is = (i: number, word: string) => path[i] === undefined || path[i]!.toLowerCase() === word.toLowerCase();
  if (path.length === 0) return undefined;
  if (path[0]!.toLowerCase() === 'twinchangenotifications')
    return path.length === 1 ? undefined : 'goes below /twinChangeNotifications, which has no sub-sources';
  if (path[0]!.toLowerCase() !== 'messages') return 'matches no message';
  if (!is(1, 'modules')) return `matches no message: after /messages comes /modules, not /${path[1]}`;
  if (!is(3, 'outputs'))
    return `matches no message: after /messages/modules/${path[2]} comes /outputs, not /${path[3]}`;
  return undefined;
}

function parseSink(ts: TokenStream): Endpoint {
  const t = ts.peek();
  if (t.type === 'SYS_PROP') {
    ts.next();
    if (t.text.toLowerCase() !== '$upstream') {
      throw ts.errorAt(t, `unknown system endpoint ${describeToken(t)}`, {
        expected: '$upstream',
        hint: 'the system endpoint is $upstream',
      });
    }
    return UPSTREAM;
  }
  if (t.type === 'ID' && ts.peek(1).type === '(') {
    ts.next();
    if (t.text.toLowerCase() !== 'brokeredendpoint') {
      throw ts.errorAt(t, `unknown endpoint function ${describeToken(t)}`, {
        expected: 'BrokeredEndpoint',
        hint: 'module inputs are written BrokeredEndpoint("/modules/<module>/inputs/<input>")',
      });
    }
    ts.next(); // (
    const addr = ts.peek();
    if (addr.type !== 'STRING') ts.fail('a quoted address such as "/modules/<module>/inputs/<input>"');
    ts.next();
    if (ts.peek().type !== ')') ts.fail('")"');
    ts.next();
    // The address is taken verbatim between the quotes, without escape processing (as in the original).
    const endpoint = parseBrokeredAddress(addr.text.slice(1, -1));
    if (typeof endpoint === 'string')
      throw ts.errorAt(addr, endpoint, { expected: '"/modules/<module>/inputs/<input>"' });
    return endpoint;
  }
  return ts.fail('$upstream or BrokeredEndpoint("/modules/<module>/inputs/<input>")');
}

/** The prefix a route source matches: trailing "*" and "/" trimmed, then one "/" appended ('/*' -> '/'). */
export function sourcePrefix(source: string): string {
  let s = source.trim().replace(/\*+$/, '');
  if (s.length > 1) s = s.replace(/\/+$/, '');
  return withSlash(s);
}

function withSlash(s: string): string {
  return s.trim().replace(/\/+$/, '') + '/';
}

/** Whether a message from `messageSource` (e.g. '/messages/modules/m1/outputs/o1') is taken by a route with this prefix. */
export function sourceMatches(prefix: string, messageSource: string): boolean {
  const m = withSlash(messageSource);
  return m.length >= prefix.length && m.slice(0, prefix.length).toLowerCase() === prefix.toLowerCase();
}
