import { UserError } from '../util/errors.ts';

/** Where something sits in a route's text: 0-based offset plus 1-based line and column for people. */
export interface TextPosition {
  offset: number;
  line: number;
  column: number;
}

export function positionOf(text: string, offset: number): TextPosition {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { offset, line, column: offset - lineStart + 1 };
}

function describePosition(p: TextPosition): string {
  return p.line === 1 ? `position ${p.column}` : `line ${p.line}, column ${p.column}`;
}

/**
 * A route (or condition) that cannot be compiled: a syntax error, a type error
 * (`temp > 30` with a string property), an unknown function or a bad endpoint.
 * The message starts with the 1-based position so it reads well on one CLI line.
 */
export class RouteSyntaxError extends UserError {
  readonly position: number;
  readonly line: number;
  readonly column: number;
  readonly expected?: string;
  readonly found?: string;
  readonly detail: string;

  constructor(
    text: string,
    offset: number,
    detail: string,
    opts: { expected?: string; found?: string; hint?: string } = {},
  ) {
    const p = positionOf(text, offset);
    super(`${describePosition(p)}: ${detail}`, opts.hint);
    this.name = 'RouteSyntaxError';
    this.position = p.column;
    this.line = p.line;
    this.column = p.column;
    this.expected = opts.expected;
    this.found = opts.found;
    this.detail = detail;
  }
}

/** The `$edgeHub` desired properties (or one route in them) are unusable; names the route when there is one. */
export class RouteConfigError extends UserError {
  readonly routeName?: string;

  constructor(message: string, opts: { routeName?: string; hint?: string; cause?: unknown } = {}) {
    super(opts.routeName !== undefined ? `route "${opts.routeName}": ${message}` : message, opts.hint);
    this.name = 'RouteConfigError';
    this.routeName = opts.routeName;
    if (opts.cause !== undefined) (this as { cause?: unknown }).cause = opts.cause;
  }
}
