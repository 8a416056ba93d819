import type { CacheItem, EndpointState, QueueState } from './state.ts';
import type { QueuedMessage, ReadResult } from './types.ts';

/**
 * Recently committed entries kept in memory per queue (QueueState.cache), so that readers that
 * keep up are served without the database. A queue's cache holds every committed, undeleted
 * entry above its `cacheFrom`; below that, entries are read from the file.
 */
export class ReadCache {
  constructor(
    /** At most this many entries per queue ... */
    private readonly maxEntries: number,
    /** ... and this many body bytes. */
    private readonly maxBytes: number,
  ) {}

  /** A committed entry, in seq order. */
  push(q: QueueState, entry: CacheItem): void {
    if (this.maxEntries <= 0) {
      q.cacheFrom = entry.seq;
      return;
    }
    q.cache.push(entry);
    q.cacheBytes += entry.message.body.length;
    if (q.cache.length - q.head > this.maxEntries || q.cacheBytes > this.maxBytes) {
      // Nobody is keeping up with this queue: keep the newest half, the rest stays on disk.
      let drop = q.head;
      while (
        drop < q.cache.length &&
        (q.cache.length - drop > this.maxEntries / 2 || q.cacheBytes > this.maxBytes / 2)
      ) {
        q.cacheBytes -= q.cache[drop].message.body.length;
        drop++;
      }
      if (drop > q.head) q.cacheFrom = q.cache[drop - 1].seq;
      q.cache = q.cache.slice(drop);
      q.head = 0;
    }
  }

  /**
   * Up to `limit` live entries after `afterSeq` (at least `q.cacheFrom`) up to `upTo`. Entries
   * found expired are marked gone and handed to `expire`, to be deleted with the next commit.
   */
  read(
    ep: EndpointState,
    q: QueueState,
    afterSeq: number,
    upTo: number,
    limit: number,
    now: () => number,
    expire: (ep: EndpointState, priority: number, seq: number) => void,
  ): ReadResult {
    let items = q.cache;
    // The reader has moved past everything up to afterSeq: drop it from memory.
    let lo = q.head;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (items[mid].seq <= afterSeq) lo = mid + 1;
      else hi = mid;
    }
    if (lo > q.head) {
      for (let k = q.head; k < lo; k++) q.cacheBytes -= items[k].message.body.length;
      q.head = lo;
      q.cacheFrom = afterSeq;
      compact(q);
      items = q.cache;
    }
    const at = now();
    const entries: QueuedMessage[] = [];
    let cursor = afterSeq;
    let i = q.head;
    for (; i < items.length && entries.length < limit; i++) {
      const e = items[i]!;
      if (e.seq > upTo) break;
      cursor = e.seq;
      if (e.gone || ep.pendingDelete.has(e.seq)) continue;
      if (e.expiresAt <= at) {
        e.gone = true;
        expire(ep, q.priority, e.seq);
        continue;
      }
      entries.push(e);
    }
    const exhausted = i >= items.length || items[i].seq > upTo;
    return { entries, cursor, exhausted };
  }

  /** A deleted entry (delivered or expired) is skipped from now on. */
  markGone(q: QueueState, seq: number): void {
    const items = q.cache;
    let lo = q.head;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (items[mid].seq < seq) lo = mid + 1;
      else hi = mid;
    }
    if (lo < items.length && items[lo].seq === seq) items[lo].gone = true;
  }
}

function compact(q: QueueState): void {
  if (q.head > 1024 && q.head * 2 > q.cache.length) {
    q.cache = q.cache.slice(q.head);
    q.head = 0;
  }
}
