/**
 * Polls `probe` every 300 ms until it returns a value; a probe that throws (the service SDK
 * while a gateway restarts) counts as "not yet". Past `ms` it fails with the last error and
 * what `context` adds (a gateway's output, the engine's containers), so a timeout says why.
 */
export async function pollUntil<T>(
  what: string,
  ms: number,
  probe: () => Promise<T | undefined>,
  context: () => Promise<string> | string = () => '',
): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`${what}: not within ${ms} ms${last ? ` (${(last as Error).message})` : ''}\n${await context()}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}
