/**
 * One exponential backoff with jitter for a whole connection: every failure (connect refused,
 * TLS or authentication refused, connection lost soon after it opened) doubles the wait, from
 * `minMs` up to `maxMs`, and each wait is drawn from [0.8 d, 1.2 d] (kept inside the bounds)
 * so that gateways cut off together do not come back in lockstep.
 */
export class Backoff {
  private failures = 0;

  constructor(
    private readonly minMs = 1000,
    private readonly maxMs = 30_000,
    private readonly random: () => number = Math.random,
  ) {}

  /** Failures since the last reset. */
  get attempts(): number {
    return this.failures;
  }

  /** The wait before the next attempt; counts a failure. */
  next(): number {
    const full = Math.min(this.maxMs, this.minMs * 2 ** Math.min(this.failures, 30));
    this.failures++;
    const jittered = full * (0.8 + 0.4 * this.random());
    return Math.round(Math.min(this.maxMs, Math.max(this.minMs, jittered)));
  }

  reset(): void {
    this.failures = 0;
  }
}
