import { childLog } from './log.ts';

/** What a start-up warm-up did (protocols/warm-up.ts, store/warm-up.ts). */
export interface WarmUpResult {
  rounds: number;
  messages: number;
  ms: number;
}

const log = childLog('warm-up');

/**
 * Runs one of a node's start-up warm-ups, unless STRATA_NO_WARM_UP=1 (to measure what they
 * save). A warm-up that fails is logged and the start goes on: the node only starts colder.
 */
export async function warmUpAtStart(
  what: string,
  env: NodeJS.ProcessEnv,
  run: () => WarmUpResult | Promise<WarmUpResult>,
): Promise<WarmUpResult | undefined> {
  if (env.STRATA_NO_WARM_UP === '1') return undefined;
  try {
    const r = await run();
    log.debug({ ...r, ms: Math.round(r.ms) }, `${what} warmed up`);
    return r;
  } catch (err) {
    log.warn({ err: (err as Error).message }, `warming up the ${what} failed; starting without`);
    return undefined;
  }
}
