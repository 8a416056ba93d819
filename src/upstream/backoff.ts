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

const PROBE_MS = 400;

/**
 * The waits of a link's reconnect loop: a backoff that `wake()` cuts short (the link closing),
 * and, after an unreachable parent, a TCP probe every ~0.4 s that ends the wait as soon as the
 * parent listens again, so a link is back within about half a second of its parent's return
 * however long the backoff had grown.
 */
export class ReconnectPause {
  private finishNow?: () => void;

  constructor(private readonly probe: (timeoutMs: number) => Promise<boolean>) {}

  /** Waits `ms`; with `probing`, returns early once the parent accepts connections again. */
  wait(ms: number, probing: boolean): Promise<void> {
    return new Promise((resolve) => {
      let done = false;
      let probeTimer: NodeJS.Timeout | undefined;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (probeTimer) clearTimeout(probeTimer);
        this.finishNow = undefined;
        resolve();
      };
      const timer = setTimeout(finish, ms);
      this.finishNow = finish;
      if (!probing) return;
      const tick = () => {
        if (done) return;
        void this.probe(PROBE_MS).then((listening) => {
          if (done) return;
          if (listening) finish();
          else probeTimer = setTimeout(tick, PROBE_MS + Math.round(Math.random() * 100));
        });
      };
      probeTimer = setTimeout(tick, PROBE_MS);
    });
  }

  /** Ends the wait under way, if any. */
  wake(): void {
    this.finishNow?.();
  }
}
