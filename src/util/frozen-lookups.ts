/**
 * Lookups answered from memory once read (misses too), for identity records that every
 * connection checks and that change rarely. What it hands out is shared, so it is frozen
 * through and through: a caller changing it by mistake throws instead of corrupting the cache.
 * The owner calls `clear()` on any change to what it caches.
 */
export class FrozenLookups<T extends object> {
  private readonly known = new Map<string, T | null>();

  get(key: string, read: () => T | undefined): T | undefined {
    let v = this.known.get(key);
    if (v === undefined) {
      v = deepFreeze(read() ?? null);
      this.known.set(key, v);
    }
    return v ?? undefined;
  }

  clear(): void {
    this.known.clear();
  }
}

function deepFreeze<T>(v: T): T {
  if (v && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const k of Object.keys(v)) deepFreeze((v as Record<string, unknown>)[k]);
  }
  return v;
}
