/**
 * Meaning of conditions: static types, three-valued logic, and evaluation against a message.
 *
 * Like the original, the language is statically typed. Every expression has a type known when
 * the route is compiled (string, number, bool, null, undefined, or "$body value" whose kind is
 * only known at run time), and operators check their operand types then: comparing an
 * application property (always a string) with a number, `temp > 30`, is a compile error, not a
 * false or undefined result; write `as_number(temp) > 30` or `temp > '30'` (string order).
 * Mixed-type comparisons are only possible with `$body` values (see compareValues).
 *
 * At run time a missing property, an undefined function result or NaN is undefined, and
 * undefined spreads: arithmetic and string functions give undefined, comparisons give
 * undefined, `false AND undefined` is false, `true OR undefined` is true, `NOT undefined` is
 * undefined. A route fires only when its condition is exactly true.
 */
import type { QType, Runtime } from './builtins.ts';
import { Compiler, type CompileOptions } from './compiler.ts';
import { parseCondition, type ConditionNode } from './condition.ts';
import type { Tri } from './logic.ts';
import { MessageView, type RoutableMessage } from './message.ts';

// The parts: three-valued logic (logic.ts), comparisons (compare.ts), operators (operators.ts),
// names and function calls (compiler.ts).
export { compareValues } from './compare.ts';
export type { CompileOptions } from './compiler.ts';
export { and3, not3, or3, type Tri } from './logic.ts';

export interface CompiledCondition {
  /** The condition text, or undefined for a route without WHERE (always true). */
  readonly text: string | undefined;
  evaluate(message: RoutableMessage | MessageView): Tri;
}

/** Compiles a condition text on its own (positions in errors are within this text). */
export function compileCondition(text: string, opts: CompileOptions = {}): CompiledCondition {
  return compileConditionNode(parseCondition(text), text, text, opts);
}

/** Compiles an already parsed condition; `fullText` is what error positions refer to (the whole route). */
export function compileConditionNode(
  node: ConditionNode | undefined,
  conditionText: string | undefined,
  fullText: string,
  opts: CompileOptions = {},
): CompiledCondition {
  if (node === undefined) {
    // An empty condition is undefined (never fires), as in the original; a route without WHERE is true.
    const always: Tri = conditionText === undefined ? true : undefined;
    return { text: conditionText, evaluate: () => always };
  }
  const c = new Compiler(fullText, opts).compile(node);
  const toTri = truthOf(c.type);
  const ev = c.ev;
  return {
    text: conditionText,
    evaluate(message) {
      const view = message instanceof MessageView ? message : new MessageView(message);
      try {
        return toTri(ev(view));
      } catch {
        // Message content is untrusted; nothing in it may take the router down. Unknown -> not routed.
        return undefined;
      }
    },
  };
}

export function evaluateCondition(condition: CompiledCondition, message: RoutableMessage | MessageView): Tri {
  return condition.evaluate(message);
}

/** How a final value of each type reads as a condition: only bools (and bool body values) can be true; null is false. */
function truthOf(type: QType): (v: Runtime) => Tri {
  switch (type) {
    case 'bool':
      return (v) => v as Tri;
    case 'null':
      return () => false;
    case 'value':
      return (v) => (typeof v === 'boolean' ? v : undefined);
    default:
      return () => undefined;
  }
}
