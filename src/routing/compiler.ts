import { parseBodyPath, type PathStep } from './body-path.ts';
import { describeSignatures, findExecutor, toBodyValue, typeName } from './builtins.ts';
import type { ConditionNode } from './condition.ts';
import { RouteSyntaxError } from './errors.ts';
import { binary, type Compiled, type Fail, unary } from './operators.ts';

/**
 * Compiles a condition's syntax tree to closures, checking static types on the way: literals,
 * names (application and system properties, `$body` paths) and function calls here, operators
 * in operators.ts.
 */

export interface CompileOptions {
  /** The route's source as written (e.g. '/twinChangeNotifications'); twin_change_includes needs it. */
  source?: string;
}

const MAX_COMPILE_DEPTH = 500;

const TWIN_PATH_PREFIXES = ['properties.reported.', 'properties.desired.', 'tags.'];

export class Compiler {
  private readonly fail: Fail;

  constructor(
    private readonly text: string,
    private readonly opts: CompileOptions,
  ) {
    this.fail = (at, detail, hint) => this.error(at, detail, hint);
  }

  private error(at: number, detail: string, hint?: string): RouteSyntaxError {
    return new RouteSyntaxError(this.text, at, detail, { hint });
  }

  private depth = 0;

  compile(n: ConditionNode): Compiled {
    // Long operator chains nest as deeply as parentheses do; bound both compile and evaluation stacks.
    if (++this.depth > MAX_COMPILE_DEPTH)
      throw this.error(n.start, `condition too complex: more than ${MAX_COMPILE_DEPTH} nested operations`);
    try {
      return this.compileNode(n);
    } finally {
      this.depth--;
    }
  }

  private compileNode(n: ConditionNode): Compiled {
    switch (n.kind) {
      case 'literal': {
        const lit = n.lit;
        switch (lit.type) {
          case 'null':
            return { type: 'null', ev: () => null };
          case 'undefined':
            return { type: 'undefined', ev: () => undefined };
          default: {
            const v = lit.value;
            return { type: lit.type, ev: () => v };
          }
        }
      }
      case 'property':
        return this.property(n.name, n.start);
      case 'system':
        return this.system(n.name, n.escaped, n.start);
      case 'call':
        return this.call(n);
      case 'unary':
        return unary(this.fail, n.op, this.compile(n.operand), n.start);
      case 'binary':
        return binary(this.fail, n.op, this.compile(n.left), this.compile(n.right), n.opStart);
    }
  }

  /**
   * `$name`: the application property literally named `$name` if the message has one, else the
   * system property `name`. `{$name}`: always the system property. `$body.path` (prefix in any
   * case) reads the body; an application property named `$body.path` still wins unless escaped.
   * Names with [ ] that are not body queries are undefined.
   */
  private system(name: string, escaped: boolean, at: number): Compiled {
    let body: PathStep[] | undefined;
    if (name.toLowerCase().startsWith('$body.')) {
      const parsed = parseBodyPath(name.slice('$body.'.length));
      if (typeof parsed === 'string') throw this.error(at, parsed);
      body = parsed;
    }
    if (body !== undefined) {
      const steps = body;
      if (escaped || name.includes('[') || name.includes(']')) return { type: 'value', ev: (m) => m.bodyValue(steps) };
      return {
        type: 'value',
        ev: (m) => {
          const app = m.app(name);
          return app !== undefined ? app : m.bodyValue(steps);
        },
      };
    }
    if (name.includes('[') || name.includes(']')) return { type: 'undefined', ev: () => undefined };
    const sysName = name.slice(1);
    if (escaped) return { type: 'string', ev: (m) => m.system(sysName) };
    return {
      type: 'string',
      ev: (m) => {
        const app = m.app(name);
        return app !== undefined ? app : m.system(sysName);
      },
    };
  }

  /**
   * A bare name reads the application property. The lexer keeps a "-" written directly before a
   * name inside the name, as the original's does, so `-$body.hum` is one token. Read only as a
   * property it would be a string, and `-$body.hum = -40` would not compile; so, like `$body.x`
   * itself, it reads the application property of that literal name when the message has one,
   * else the negated body value (a number operation on a value typed at run time).
   */
  private property(name: string, at: number): Compiled {
    if (/^-\$body\./i.test(name)) {
      const steps = parseBodyPath(name.slice('-$body.'.length));
      if (typeof steps === 'string') throw this.error(at, steps);
      return {
        type: 'value',
        ev: (m) => {
          const app = m.app(name);
          if (app !== undefined) return app;
          const v = m.bodyValue(steps);
          return typeof v === 'number' ? -v : undefined;
        },
      };
    }
    return { type: 'string', ev: (m) => m.app(name) };
  }

  private call(n: Extract<ConditionNode, { kind: 'call' }>): Compiled {
    const fname = n.name.toLowerCase();
    if (fname === 'twin_change_includes') return this.twinChangeIncludes(n);
    const args = n.args.map((a) => this.compile(a));
    const types = args.map((a) => a.type);
    const exec = findExecutor(fname, types);
    if (exec === undefined) {
      const known = describeSignatures(fname);
      if (known === '')
        throw this.error(
          n.start,
          `unknown function "${n.name}"`,
          'see the route language functions: abs, exp, power, square, ceiling, floor, sign, sqrt, as_number, is_bool, is_defined, is_null, is_number, is_string, concat, length, lower, upper, substring, index_of, starts_with, ends_with, contains, twin_change_includes',
        );
      throw this.error(
        n.start,
        `invalid arguments to function "${n.name}": ${fname}(${types.map(typeName).join(', ')}); expected ${known}`,
        types.includes('string') && known.includes('number')
          ? 'application and system properties are strings; convert with as_number(...)'
          : undefined,
      );
    }
    const evs = args.map((a) => a.ev);
    const run = exec.run;
    if (exec.sig.kind === 'any') return { type: exec.result, ev: () => run([]) };
    const convert = exec.sig.body;
    if (!convert) return { type: exec.result, ev: (m) => run(evs.map((e) => e(m))) };
    return { type: exec.result, ev: (m) => run(evs.map((e, i) => toBodyValue(types[i], e(m)))) };
  }

  /**
   * twin_change_includes(properties.reported.x): true when the twin change notification's body
   * contains the path (an object or null counts), false when it does not, undefined when the
   * body cannot be read. Its argument is a path, not an expression.
   */
  private twinChangeIncludes(n: Extract<ConditionNode, { kind: 'call' }>): Compiled {
    const src = this.opts.source?.trim().replace(/\*+$/, '').replace(/\/+$/, '').toLowerCase();
    if (src !== '/twinchangenotifications') {
      throw this.error(n.start, `twin_change_includes can only be used in routes FROM /twinChangeNotifications`);
    }
    const path = n.argText;
    if (path === '')
      throw this.error(
        n.start,
        'twin_change_includes needs a path argument, e.g. twin_change_includes(properties.reported.x)',
      );
    const steps = parseBodyPath(path);
    if (typeof steps === 'string')
      throw this.error(n.start, `twin_change_includes: ${steps.replace('$body path', 'path')}`);
    if (!TWIN_PATH_PREFIXES.some((p) => path.toLowerCase().startsWith(p))) {
      throw this.error(
        n.start,
        `twin_change_includes: "${path}" is not supported; the path must start with ${TWIN_PATH_PREFIXES.map((p) => `"${p}"`).join(', ')}`,
      );
    }
    return { type: 'bool', ev: (m) => m.bodyHas(steps) };
  }
}
