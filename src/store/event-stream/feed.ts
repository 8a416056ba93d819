import type { StoredEvent, StoredEventInfo } from '../../model/events.ts';
import { log } from './log.ts';
import type { EventNumbers } from './numbers.ts';
import { EventTail } from './tail.ts';

/** Bounds of the in-memory tail: events, and bytes of their bodies. */
const TAIL_EVENTS = 50_000;
const TAIL_BYTES = 32 * 1024 * 1024;

/**
 * What readers see of the stream: the end they may read up to (only events on disk), the newest
 * events in memory, and the listeners and waiting readers told of each commit.
 */
export class EventFeed {
  /** Readers see events below these: the ones on disk. */
  seq: number;
  readonly pseqs: number[];
  /** The newest events, for readers that follow the stream's end. */
  readonly tail = new EventTail(TAIL_EVENTS, TAIL_BYTES);
  /** Woken after each commit and at close. */
  readonly waiters = new Set<() => void>();
  closed = false;
  private readonly listeners = new Set<(events: StoredEvent[]) => void>();

  constructor(numbers: EventNumbers) {
    this.seq = numbers.seq;
    this.pseqs = numbers.pseqs.slice();
  }

  /** A commit is on disk: its events become readable, and listeners and readers hear of them. */
  publish(infos: StoredEventInfo[], events: StoredEvent[]): void {
    const lastInfo = infos[infos.length - 1]!;
    this.seq = lastInfo.sequenceNumber + 1;
    for (const info of infos) this.pseqs[info.partition] = info.partitionSequenceNumber + 1;
    this.tail.add(events);
    if (this.listeners.size > 0) {
      for (const l of this.listeners) {
        try {
          l(events);
        } catch (err) {
          log.error({ err }, 'event stream listener failed');
        }
      }
    }
    this.wakeAll();
  }

  onAppend(listener: (events: StoredEvent[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  wakeAll(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves after the next commit, after `ms`, on abort or at close, whichever comes first. */
  waitForAppend(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }
}
