/**
 * How deeply a parsed JSON value nests, arrays and objects alike. JSON.parse copes with any
 * depth, but what comes after it (JSON.stringify, structuredClone, recursive merges) does not:
 * ten thousand nested arrays exhaust the stack. So every document that enters from the wire is
 * measured here first, with an explicit stack, stopping at the first container past the limit.
 */

/** IoT Hub's nesting limit for tags, desired and reported properties: 10 levels below the section. */
export const TWIN_MAX_DEPTH = 10;

/**
 * Nesting allowed in other JSON from the wire (method payloads, request bodies): far beyond
 * anything a real document uses, far below what the recursive code after it can take.
 */
export const JSON_MAX_DEPTH = 100;

/**
 * True when a container (object or array) inside `value` sits more than `maxDepth` levels below
 * it. `value` itself is level 0, its members level 1, and so on: `{"a":{"b":1}}` nests 1 level,
 * `[[[1]]]` nests 2. Scalars nest 0.
 */
export function nestsDeeperThan(value: unknown, maxDepth: number): boolean {
  if (value === null || typeof value !== 'object') return false;
  const pending: Array<{ v: object; depth: number }> = [{ v: value, depth: 0 }];
  while (pending.length > 0) {
    const { v, depth } = pending.pop()!;
    if (depth > maxDepth) return true;
    const members = Array.isArray(v) ? v : Object.values(v);
    for (const m of members)
      if (m !== null && typeof m === 'object') pending.push({ v: m as object, depth: depth + 1 });
  }
  return false;
}

/** The words of a refusal for nesting past `maxDepth`, the same at every entry point and every layer. */
export function tooDeepMessage(what: string, maxDepth = TWIN_MAX_DEPTH): string {
  return `${what} nests objects or arrays deeper than ${maxDepth} levels, the most allowed`;
}
