import type Database from 'better-sqlite3';
import type { QueuedMessage, StoredMessage } from './types.ts';

/**
 * The message store's view of its queues in memory, shared by its parts: endpoints, their
 * queues (one per priority) with their read caches and sweep positions, and the store's counts.
 */

/** A committed entry kept in memory: itself what readers get, plus whether it is delivered or expired. */
export class CacheItem implements QueuedMessage {
  gone = false;

  constructor(
    readonly seq: number,
    readonly endpoint: string,
    readonly priority: number,
    readonly enqueuedAt: number,
    readonly expiresAt: number,
    readonly message: StoredMessage,
  ) {}
}

export interface QueueState {
  epId: number;
  endpoint: string;
  priority: number;
  /** Committed rows in the database. */
  length: number;
  /** The cache holds every committed, undeleted entry of this queue with seq > cacheFrom. */
  cacheFrom: number;
  cache: CacheItem[];
  head: number;
  /** Body bytes of cache[head..]. */
  cacheBytes: number;
  /** Background sweep position and the earliest expiry known to remain. */
  sweepCursor: number;
  sweepPassMin: number;
  nextExpiry: number;
}

export interface EndpointState {
  id: number;
  name: string;
  checkpointed: number;
  expired: number;
  /** Seqs whose deletion (checkpoint or expiry) waits for the next commit. */
  pendingDelete: Set<number>;
  queues: Map<number, QueueState>;
  listeners: Set<() => void>;
  /** Appends for this endpoint waiting for their commit. */
  pendingAppends: number;
  /** Counted in the commit that writes them. */
  dirtyCheckpointed: number;
  dirtyExpired: number;
}

/** Stored payloads (each message once) and those waiting for their commit. */
export interface StoreCounts {
  messages: number;
  bytes: number;
  pendingMessages: number;
  pendingBytes: number;
}

export interface PendingAppend {
  seq: number;
  enqueuedAt: number;
  message: StoredMessage;
  meta: string;
  size: number;
  targets: Array<{ ep: EndpointState; priority: number; expiresAt: number }>;
  resolve: () => void;
  reject: (err: Error) => void;
}

/** The answer of an append whose batch is answered through another of its items. */
export function ignore(): void {}

export interface PendingDelete {
  ep: EndpointState;
  priority: number;
  seq: number;
  reason: 'checkpoint' | 'expired' | 'unreadable';
  /** An entry that cannot be read back: kept, with why, in set_aside by the same commit. */
  aside?: { row: MessageRow; why: string };
}

export interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

export interface MessageRow {
  seq: number;
  expires: number;
  enq: number;
  meta: string;
  body: Buffer;
}

/** The endpoints by name; a new name gets its row (and so its id) at once. */
export class Endpoints {
  readonly byName = new Map<string, EndpointState>();

  constructor(private readonly insertEndpoint: Database.Statement) {}

  get(name: string): EndpointState | undefined {
    return this.byName.get(name);
  }

  values(): IterableIterator<EndpointState> {
    return this.byName.values();
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  /** An endpoint as read from the database at open. */
  load(id: number, name: string, checkpointed: number, expired: number): EndpointState {
    const ep = newEndpointState(id, name, checkpointed, expired);
    this.byName.set(name, ep);
    return ep;
  }

  ensure(name: string): EndpointState {
    let ep = this.byName.get(name);
    if (!ep) {
      // Rare (once per endpoint name); its own tiny commit keeps ids stable before any append uses them.
      const id = Number(this.insertEndpoint.run(name).lastInsertRowid);
      ep = newEndpointState(id, name, 0, 0);
      this.byName.set(name, ep);
    }
    return ep;
  }
}

function newEndpointState(id: number, name: string, checkpointed: number, expired: number): EndpointState {
  return {
    id,
    name,
    checkpointed,
    expired,
    pendingDelete: new Set(),
    queues: new Map(),
    listeners: new Set(),
    pendingAppends: 0,
    dirtyCheckpointed: 0,
    dirtyExpired: 0,
  };
}

/** The endpoint's queue at this priority, made on first use; its cache starts after `committedSeq`. */
export function queueOf(ep: EndpointState, priority: number, committedSeq: number): QueueState {
  let q = ep.queues.get(priority);
  if (!q) {
    q = {
      epId: ep.id,
      endpoint: ep.name,
      priority,
      length: 0,
      cacheFrom: committedSeq,
      cache: [],
      head: 0,
      cacheBytes: 0,
      sweepCursor: 0,
      sweepPassMin: Infinity,
      nextExpiry: 0,
    };
    ep.queues.set(priority, q);
  }
  return q;
}
