/**
 * An error meant for a person: `message` says what is wrong, `hint` says what to do about it.
 * The CLI prints these as one line without a stack trace; anything else is a bug and keeps its stack.
 */
export class UserError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'UserError';
  }
}

export function describe(err: unknown): string {
  if (err instanceof UserError) return err.hint ? `${err.message}. ${err.hint}` : err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
