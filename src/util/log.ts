import { pino, type Logger } from 'pino';

/** One process-wide logger; STRATA_LOG_LEVEL=debug|info|warn|error|silent tunes it. */
export const log: Logger = pino({
  level: process.env.STRATA_LOG_LEVEL ?? 'info',
  base: undefined,
});

export function childLog(component: string): Logger {
  return log.child({ component });
}
