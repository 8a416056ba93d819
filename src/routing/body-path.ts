/**
 * `$body.a.b[2]` paths: the supported subset (names separated by dots, each optionally followed
 * by one array index) and how a path reads a parsed JSON body.
 *
 * Reading follows the original: a path that leads nowhere (no such member, index out of range,
 * member of a non-object) is JSON null, not undefined, so `$body.missing = null` is true and
 * `is_defined($body.missing)` is true; a path that ends on an object or array is undefined.
 */

/** A path that leads nowhere; behaves as JSON null everywhere except twin_change_includes. */
export const MISSING: unique symbol = Symbol('missing');

/**
 * A value read from the body (the original's "query value"): `undefined` when it cannot be
 * read at all, JSON null or MISSING for null, else the JSON scalar. Never NaN.
 */
export type BodyValue = undefined | null | typeof MISSING | boolean | number | string;

export interface PathStep {
  name: string;
  index?: number;
}

/** Parses the part after `$body.`; returns an error text instead of throwing so callers can place it. */
export function parseBodyPath(path: string): PathStep[] | string {
  if (path.length === 0) return 'a $body query needs a path after "$body."';
  const steps: PathStep[] = [];
  for (const part of path.split('.')) {
    const m = /^([^[\].]+)(?:\[([0-9]+)\])?$/.exec(part);
    if (!m) {
      return part.length === 0
        ? `empty name in $body path "${path}"`
        : `unsupported $body path "${path}": use names separated by dots, each optionally followed by one [index]`;
    }
    // An all-digit segment is a number token in the original's path grammar, not a name.
    if (/^[0-9]+$/.test(m[1]))
      return `unsupported $body path "${path}": "${m[1]}" is not a name (use [${m[1]}] for an array index)`;
    steps.push(m[2] === undefined ? { name: m[1] } : { name: m[1], index: Number(m[2]) });
  }
  return steps;
}

/** Reads a path from a parsed body whose root is a JSON object. */
export function readBodyPath(root: Record<string, unknown>, steps: PathStep[]): BodyValue {
  let cur: unknown = root;
  for (const step of steps) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur) || !Object.hasOwn(cur, step.name)) return MISSING;
    cur = (cur as Record<string, unknown>)[step.name];
    if (step.index !== undefined) {
      if (!Array.isArray(cur) || step.index >= cur.length) return MISSING;
      cur = cur[step.index];
    }
  }
  if (cur === null) return null;
  switch (typeof cur) {
    case 'boolean':
    case 'string':
      return cur;
    case 'number':
      return Number.isNaN(cur) ? undefined : cur;
    default:
      return undefined; // objects and arrays are not leaf values
  }
}

/** Like readBodyPath but only asks whether something is there (objects count): what twin_change_includes needs. */
export function bodyPathPresent(root: Record<string, unknown>, steps: PathStep[]): boolean {
  let cur: unknown = root;
  for (const step of steps) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur) || !Object.hasOwn(cur, step.name)) return false;
    cur = (cur as Record<string, unknown>)[step.name];
    if (step.index !== undefined) {
      if (!Array.isArray(cur) || step.index >= cur.length) return false;
      cur = cur[step.index];
    }
  }
  return true;
}
