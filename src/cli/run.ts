import { UserError, describe } from '../util/errors.ts';

/**
 * Wraps a command action so that a UserError becomes one line on stderr and a non-zero exit,
 * while a real bug still shows its stack.
 */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      if (err instanceof UserError) {
        process.stderr.write(`strata: ${describe(err)}\n`);
        process.exitCode = err.exitCode;
        return;
      }
      const code = (err as NodeJS.ErrnoException | undefined)?.code;
      if (code === 'ENOENT' || code === 'EACCES' || code === 'EADDRINUSE') {
        process.stderr.write(`strata: ${(err as Error).message}\n`);
        process.exitCode = 1;
        return;
      }
      throw err;
    }
  };
}
