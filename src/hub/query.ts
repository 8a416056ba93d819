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

import { QueryError } from './query-lexer.ts';
import { parseQuery, type PathExpr, type Query } from './query-parser.ts';
import { evalCond, project, resolvePath, type TwinJson } from './query-eval.ts';

export { QueryError } from './query-lexer.ts';
export { MAX_QUERY_NESTING, parseQuery } from './query-parser.ts';
export type { TwinJson } from './query-eval.ts';

export interface QuerySource {
  devices(): Iterable<TwinJson>;
  modules(): Iterable<TwinJson>;
}

function samePath(a: PathExpr, b: PathExpr): boolean {
  return (
    a.segments.length === b.segments.length &&
    a.segments.every((s, i) => String(s).toLowerCase() === String(b.segments[i]).toLowerCase())
  );
}

/** What COUNT() and GROUP BY allow, checked before any twin is read. */
function checkAggregates(q: Query): void {
  const items = q.items;
  if (!items) {
    if (q.groupBy)
      throw new QueryError(
        `error at position ${q.groupBy[0]!.pos + 1}: GROUP BY cannot be used with SELECT *; select the grouped properties and COUNT()`,
        q.groupBy[0]!.pos + 1,
      );
    return;
  }
  const hasCount = items.some((i) => i.type === 'count');
  if (q.groupBy) {
    for (const item of items) {
      if (item.type === 'field' && !q.groupBy.some((g) => samePath(g, item.path))) {
        throw new QueryError(
          `error at position ${item.path.pos + 1}: property ${item.path.segments.join('.')} must appear in GROUP BY`,
          item.path.pos + 1,
        );
      }
    }
  } else if (hasCount) {
    const field = items.find((i) => i.type === 'field');
    if (field && field.type === 'field') {
      throw new QueryError(
        `error at position ${field.path.pos + 1}: property ${field.path.segments.join('.')} cannot be selected with COUNT() without GROUP BY`,
        field.path.pos + 1,
      );
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
