/** Evaluates parsed conditions and selections over one twin, with the three-valued logic query.ts describes. */
import type { CallExpr, CompareOp, Cond, Expr, SelectItem, Segment } from './query-parser.ts';

export type TwinJson = Record<string, unknown>;

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

export function resolvePath(doc: TwinJson, segments: Segment[]): unknown {
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
    case 'literal':
      return e.value;
    case 'path':
      return resolvePath(doc, e.segments);
    case 'call':
      return evalCall(e, doc);
  }
}

function evalCall(e: CallExpr, doc: TwinJson): unknown {
  const args = e.args.map((a) => evalExpr(a, doc));
  const [a, b] = args;
  switch (e.name) {
    case 'is_defined':
      return a !== undefined;
    case 'is_null':
      return a === null;
    case 'is_bool':
      return typeof a === 'boolean';
    case 'is_number':
      return typeof a === 'number';
    case 'is_string':
      return typeof a === 'string';
    case 'is_object':
      return jsonType(a) === 'object';
    case 'is_array':
      return Array.isArray(a);
    case 'is_primitive':
      return a === null || ['string', 'number', 'boolean'].includes(typeof a);
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
    case 'array_length':
      return Array.isArray(a) ? a.length : undefined;
    case 'length':
      return typeof a === 'string' ? a.length : undefined;
    case 'lower':
      return typeof a === 'string' ? a.toLowerCase() : undefined;
    case 'upper':
      return typeof a === 'string' ? a.toUpperCase() : undefined;
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
    case '<':
      return x < y;
    case '<=':
      return x <= y;
    case '>':
      return x > y;
    case '>=':
      return x >= y;
  }
}

export function evalCond(c: Cond, doc: TwinJson): Truth {
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

export function project(items: SelectItem[], doc: TwinJson): Record<string, unknown> {
  const row: Record<string, unknown> = {};
  for (const item of items) {
    if (item.type !== 'field') continue;
    const v = resolvePath(doc, item.path.segments);
    if (v !== undefined) row[item.alias] = v;
  }
  return row;
}
