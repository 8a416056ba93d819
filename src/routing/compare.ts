import type { BodyValue } from './body-path.ts';
import type { QType, Runtime } from './builtins.ts';
import type { Tri } from './logic.ts';

/**
 * Comparisons (`= != <> < <= > >=`) of two values of one static type and of `$body` values,
 * whose kinds are known only at run time; and which values count as defined for `??`.
 */

export type CompareOp = '=' | '!=' | '<>' | '<' | '<=' | '>' | '>=';

function verdict(op: CompareOp, c: number): boolean {
  switch (op) {
    case '=':
      return c === 0;
    case '!=':
    case '<>':
      return c !== 0;
    case '<':
      return c < 0;
    case '<=':
      return c <= 0;
    case '>':
      return c > 0;
    case '>=':
      return c >= 0;
  }
}

const order = (a: number | string, b: number | string) => (a < b ? -1 : a > b ? 1 : 0);

// Kinds of body values in the original's order; values of different kinds compare by this order.
function kindRank(v: Exclude<BodyValue, undefined>): number {
  switch (typeof v) {
    case 'boolean':
      return 1;
    case 'number':
      return 2;
    case 'string':
      return 3;
    default:
      return 4; // null, MISSING
  }
}

/**
 * Compares two body values (a scalar compared with a body value is converted to one first).
 * Undefined on either side gives undefined. Values of different kinds are never equal and are
 * ordered bool < number < string < null, as in the original: `$body.temp = '50'` is false when
 * temp is the number 50, and `$body.temp <> '50'` is true. There is no implicit conversion.
 */
export function compareValues(op: CompareOp, a: BodyValue, b: BodyValue): Tri {
  if (a === undefined || b === undefined) return undefined;
  const ra = kindRank(a);
  const rb = kindRank(b);
  if (ra !== rb) return verdict(op, ra - rb);
  if (ra === 4) return verdict(op, 0);
  if (ra === 1) return verdict(op, Number(a) - Number(b));
  return verdict(op, order(a as number | string, b as number | string));
}

export function comparator(type: QType, op: CompareOp): (a: Runtime, b: Runtime) => Tri {
  switch (type) {
    case 'string':
      return (a, b) => (a === undefined || b === undefined ? undefined : verdict(op, order(a as string, b as string)));
    case 'number':
      return (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? undefined : verdict(op, order(a as number, b as number)));
    case 'bool':
      return (a, b) => (a === undefined || b === undefined ? undefined : verdict(op, Number(a) - Number(b)));
    case 'null': {
      const r = op === '=' || op === '<=' || op === '>=';
      return () => r;
    }
    case 'undefined':
      return () => undefined;
    case 'value':
      return (a, b) => compareValues(op, a as BodyValue, b as BodyValue);
  }
}

export function definedIn(type: QType): (v: Runtime) => boolean {
  switch (type) {
    case 'number':
      return (v) => !Number.isNaN(v);
    case 'null':
      return () => true;
    case 'undefined':
      return () => false;
    default:
      return (v) => v !== undefined;
  }
}
