import type { Logger } from 'pino';
import type { IdentityRef } from '../model/identity.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import { diffValues } from '../util/merge-patch.ts';
import { identityKey } from '../model/identity.ts';
import type { TwinCache } from './twin-cache.ts';

/**
 * Keeps the desired properties a gateway hands down in step with its parent's, so that no
 * patch is lost. The twin cache holds, per identity, the desired properties last handed down
 * (a twin read answered, or a patch delivered to a subscribed session) with their `$version`.
 *
 * A patch made upstream before a subscription reaches the parent is never pushed: so each time
 * the parent confirms the subscription (first time, reconnect, link restored), the gateway reads
 * the twin upstream and, when its desired `$version` is newer than the one handed down, sends
 * the difference as one patch, as the original edge hub does on reconnection. A pushed patch
 * whose `$version` skips one (a patch was missed) triggers the same read; one already handed
 * down is dropped. Work for one identity runs in order, one step at a time.
 */

export interface DesiredSyncOptions {
  twins: TwinCache;
  /** Hands a patch to the identity's subscribed session below; false when none took it. */
  deliver(identity: IdentityRef, patch: TwinCollection): boolean;
  /** Whether the identity still wants desired pushes (a failed read is tried again only then). */
  wanted(identity: IdentityRef): boolean;
  log: Logger;
  /** First delay before a failed twin read is tried again (doubling up to 60 s). */
  retryMs?: number;
}

type Fetch = () => Promise<TwinProperties>;

const MAX_RETRY_MS = 60_000;

export class DesiredSync {
  private readonly queues = new Map<string, Promise<void>>();
  private readonly retries = new Map<string, NodeJS.Timeout>();

  constructor(private readonly o: DesiredSyncOptions) {}

  /** A patch the parent pushed. `fetch` reads the twin upstream when a patch was missed. */
  pushed(identity: IdentityRef, patch: TwinCollection, fetch: Fetch): void {
    this.enqueue(identity, () => this.onPush(identity, patch, fetch));
  }

  /** The parent confirmed the identity's desired subscription: catch up on what was missed. */
  live(identity: IdentityRef, fetch: Fetch): void {
    this.enqueue(identity, () => this.resync(identity, fetch, this.o.retryMs ?? 1000));
  }

  /** Stops retries of an identity that no longer subscribes. */
  forget(identity: IdentityRef): void {
    const k = identityKey(identity);
    const t = this.retries.get(k);
    if (t) clearTimeout(t);
    this.retries.delete(k);
  }

  close(): void {
    for (const t of this.retries.values()) clearTimeout(t);
    this.retries.clear();
  }

  private enqueue(identity: IdentityRef, step: () => Promise<void>): void {
    const k = identityKey(identity);
    const next = (this.queues.get(k) ?? Promise.resolve())
      .then(step)
      .catch((err: unknown) => this.o.log.error({ err, identity: k }, 'desired properties sync failed'));
    this.queues.set(k, next);
    void next.finally(() => {
      if (this.queues.get(k) === next) this.queues.delete(k);
    });
  }

  private async onPush(identity: IdentityRef, patch: TwinCollection, fetch: Fetch): Promise<void> {
    const v = versionOf(patch);
    const have = versionOf(this.o.twins.get(identity.deviceId, identity.moduleId)?.desired);
    if (v !== undefined && have !== undefined) {
      if (v <= have) {
        this.o.log.debug(
          { identity: identityKey(identity), version: v, have },
          'desired properties patch already handed down; dropped',
        );
        return;
      }
      if (v > have + 1) {
        this.o.log.info(
          { identity: identityKey(identity), version: v, have },
          'desired properties patch after a gap in $version: reading the twin upstream to catch up',
        );
        return this.resync(identity, fetch, this.o.retryMs ?? 1000, v);
      }
    }
    if (this.o.deliver(identity, patch)) this.o.twins.mergeDesired(identity.deviceId, identity.moduleId, patch);
  }

  /** Reads the twin upstream and hands down what changed; `atLeast`: the version a push showed exists. */
  private async resync(identity: IdentityRef, fetch: Fetch, retryMs: number, atLeast?: number): Promise<void> {
    const k = identityKey(identity);
    let twin: TwinProperties;
    try {
      twin = await fetch();
      const got = versionOf(twin.desired);
      // A parent answering from its own cache may be behind the push that sent us here.
      if (atLeast !== undefined && (got === undefined || got < atLeast))
        throw new Error(`the parent's twin has desired $version ${got ?? 'none'}, older than the pushed ${atLeast}`);
    } catch (err) {
      if (!this.o.wanted(identity)) return;
      this.o.log.warn(
        { identity: k, err: (err as Error).message, retryInMs: retryMs },
        'could not read the twin upstream to catch up on desired properties; will try again',
      );
      const old = this.retries.get(k);
      if (old) clearTimeout(old);
      const timer = setTimeout(() => {
        this.retries.delete(k);
        if (this.o.wanted(identity))
          this.enqueue(identity, () => this.resync(identity, fetch, Math.min(retryMs * 2, MAX_RETRY_MS), atLeast));
      }, retryMs);
      timer.unref();
      this.retries.set(k, timer);
      return;
    }
    const cached = this.o.twins.get(identity.deviceId, identity.moduleId);
    if (!cached) {
      // Nothing was handed down here: what the device holds is unknown, so it is not patched.
      this.o.twins.put(identity.deviceId, identity.moduleId, twin);
      return;
    }
    const want = versionOf(twin.desired);
    const have = versionOf(cached.desired);
    if (want === undefined || (have !== undefined && want <= have)) return;
    const patch: TwinCollection = {
      ...diffValues(properties(cached.desired), properties(twin.desired)),
      $version: want,
    };
    this.o.log.info(
      { identity: k, version: want, had: have },
      'desired properties changed upstream before the subscription reached it: sending the difference',
    );
    if (this.o.deliver(identity, patch)) this.o.twins.put(identity.deviceId, identity.moduleId, twin);
  }
}

function versionOf(c: TwinCollection | undefined): number | undefined {
  const v = c?.$version;
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** The properties of a collection, without `$version` and `$metadata`. */
function properties(c: TwinCollection): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(c)) if (!k.startsWith('$')) out[k] = v;
  return out;
}
