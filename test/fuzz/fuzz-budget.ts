/**
 * How long the fuzz tests run. In `npm test` each property has a small number of runs so all
 * of test/fuzz stays well under two minutes; `npm run fuzz` (or the variables below) runs them
 * longer:
 *   FUZZ_RUNS=n      runs per property (instead of each test's default)
 *   FUZZ_SECONDS=s   run each property for about s seconds, however many runs that takes
 *   FUZZ_SEED=n      replay one run (fast-check prints the seed and path of a failure)
 */
import fc, { type Parameters as FcParameters } from 'fast-check';

function envNumber(name: string, allowNegative = false): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || (n < 0 && !allowNegative))
    throw new Error(`${name} must be a ${allowNegative ? '' : 'non-negative '}number, got "${raw}"`);
  return n;
}

/** fast-check parameters for a property whose CI run count is `ciRuns`. */
export function fuzzParams(ciRuns: number): FcParameters<unknown> {
  const runs = envNumber('FUZZ_RUNS');
  const seconds = envNumber('FUZZ_SECONDS');
  const seed = envNumber('FUZZ_SEED', true);
  const params: FcParameters<unknown> = { numRuns: runs ?? (seconds !== undefined ? 1_000_000_000 : ciRuns) };
  if (seconds !== undefined) {
    // Stopping at the time limit is the plan, not a failure.
    params.interruptAfterTimeLimit = seconds * 1000;
    params.markInterruptAsFailure = false;
  }
  if (seed !== undefined) params.seed = seed;
  return params;
}

/** A generous timeout for a node:test test running a property with these parameters. */
export function fuzzTimeoutMs(ciMs: number): number {
  const seconds = envNumber('FUZZ_SECONDS');
  const runs = envNumber('FUZZ_RUNS');
  if (seconds !== undefined) return seconds * 1000 + 120_000;
  if (runs !== undefined) return Math.max(ciMs, 600_000);
  return ciMs;
}

const clip = (s: string, n = 1500): string => (s.length > n ? `${s.slice(0, n)}... (${s.length} characters)` : s);

/**
 * fc.assert with a bounded report: a counterexample can be a megabyte of route text or JSON,
 * so the failure names the seed and path to replay (FUZZ_SEED, and fast-check's `path`) and
 * clips the rest.
 */
export async function checkProperty<Ts>(
  property: fc.IProperty<Ts> | fc.IAsyncProperty<Ts>,
  params: FcParameters<unknown>,
): Promise<void> {
  // The seed up front: a run that hangs (rather than fails) is replayed with it too.
  const seed = params.seed ?? (Date.now() ^ (Math.random() * 0x100000000)) | 0;
  process.stderr.write(
    `fuzz: ${params.interruptAfterTimeLimit ? `for ${params.interruptAfterTimeLimit / 1000} s` : `${params.numRuns} runs`}, FUZZ_SEED=${seed}\n`,
  );
  const out = await fc.check(property as fc.IAsyncProperty<Ts>, { ...params, seed } as FcParameters<Ts>);
  if (!out.failed) return;
  const why = out.errorInstance instanceof Error ? out.errorInstance.message : String(out.errorInstance);
  throw new Error(
    `property failed after ${out.numRuns} runs (FUZZ_SEED=${out.seed}, path ${JSON.stringify(out.counterexamplePath)}):\n` +
      `counterexample: ${clip(fc.stringify(out.counterexample))}\nerror: ${clip(why, 4000)}`,
  );
}

const prototypeNames = new Set(Object.getOwnPropertyNames(Object.prototype));

/**
 * Names added to Object.prototype since this module loaded (prototype pollution by input that
 * reached a merge), taken off again so the next run, and shrinking, start clean.
 */
export function objectPrototypeAdditions(): string[] {
  const added = Object.getOwnPropertyNames(Object.prototype).filter((n) => !prototypeNames.has(n));
  for (const n of added) delete (Object.prototype as Record<string, unknown>)[n];
  return added;
}
