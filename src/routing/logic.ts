/** Three-valued (Kleene) logic: undefined is the third truth value. */

/** true, false, or undefined (the third value). */
export type Tri = boolean | undefined;

export function and3(a: Tri, b: Tri): Tri {
  if (a === false || b === false) return false;
  if (a === undefined || b === undefined) return undefined;
  return true;
}

export function or3(a: Tri, b: Tri): Tri {
  if (a === true || b === true) return true;
  if (a === undefined || b === undefined) return undefined;
  return false;
}

export function not3(a: Tri): Tri {
  return a === undefined ? undefined : !a;
}
