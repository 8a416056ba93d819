import type { ForwardedOrigin } from '../../model/message.ts';
import type { ResendKey } from '../resend-window.ts';

/**
 * What the message store takes and hands out, and its settings. Apart from the store itself so
 * that the message forms (sender-message.ts) and the store's parts can name them without
 * importing the store.
 */

export interface StoredMessage {
  body: Buffer;
  systemProperties: Record<string, string | undefined>;
  appProperties: Record<string, string>;
  /** Route source, e.g. `/messages` or `/messages/modules/m1/outputs/o1`. */
  source: string;
  /** Who sent it (device id or device/module); order is kept per sender. */
  sender: string;
}

export interface AppendTarget {
  endpoint: string;
  /** 0 is the highest; a non-negative integer. */
  priority: number;
  /** Seconds the entry may wait in this queue; 0, negative or Infinity means it never expires
   *  (resolve "0 = the global TTL" before calling). */
  ttlSecs: number;
}

export interface AppendEntry {
  message: StoredMessage;
  targets: AppendTarget[];
  /**
   * Set when a child gateway forwarded the message from its own store: its place there. A message
   * already stored is not stored again (see isForwardedStored); with no targets only the place is
   * recorded, so later messages of its stream are still recognised.
   */
  origin?: ForwardedOrigin;
  /** A device's message with a message id: remembered so that its resend is stored once (store/resend-window.ts). */
  resend?: ResendKey;
}

/** One queue entry as handed to a reader; pass it back to `checkpoint` once delivered. */
export interface QueuedMessage {
  readonly seq: number;
  readonly endpoint: string;
  readonly priority: number;
  /** ms since the epoch when the store accepted it. */
  readonly enqueuedAt: number;
  /** ms since the epoch; Infinity when it never expires. */
  readonly expiresAt: number;
  readonly message: StoredMessage;
}

export interface ReadOptions {
  priority: number;
  /** Only entries with seq greater than this (a reader's cursor; 0 reads from the start). */
  afterSeq: number;
  /** Only entries with seq up to and including this. */
  upToSeq?: number;
  limit: number;
}

export interface ReadResult {
  entries: QueuedMessage[];
  /** Where the next read should continue (covers entries skipped as expired or being checkpointed). */
  cursor: number;
  /** True when the range held nothing more to read at the time of the read. */
  exhausted: boolean;
}

export interface StoreSettings {
  /** The database file; created if missing. */
  path: string;
  /** Limit on stored payload bytes (body + properties), default 2 GiB. */
  maxBytes?: number;
  /** Limit on stored messages (each counted once however many endpoints it goes to), default unlimited. */
  maxMessages?: number;
  /** How long an append may wait for others to share its commit, default 1 ms. */
  commitWindowMs?: number;
  /** Commit at once when this many appends are waiting, default 4096. */
  commitMaxBatch?: number;
  /** How often expired entries are deleted in the background, default 1000 ms; 0 disables the timer. */
  sweepIntervalMs?: number;
  /** Queue rows examined per queue per sweep, default 20000 (bounds the pause a sweep causes). */
  sweepChunk?: number;
  /** Recently committed entries kept in memory per queue so readers that keep up skip the database:
   *  at most this many, default 100000 ... */
  readCacheEntries?: number;
  /** ... and at most this many body bytes, default 32 MiB (a burst the parent link has not caught up with yet). */
  readCacheBytes?: number;
  /** How commits reach the disk before acknowledgement: 'background' (default) or 'commit'; see message-store.ts. */
  sync?: 'background' | 'commit';
  /** How long a device's message id is remembered to recognise its resend (store/resend-window.ts), default 60000 ms; 0 disables. */
  resendWindowMs?: number;
  /** At most this many message ids in that window, default 100000. */
  resendWindowEntries?: number;
  /** Clock in ms since the epoch (tests). */
  now?: () => number;
  /** Free disk space kept for checkpoints: appends are refused below it (DEFAULT_DISK_RESERVE_BYTES). */
  diskReserveBytes?: number;
  /** The setting that changes the reserve, named in the refusal. */
  diskReserveSetting?: string;
}

export interface EndpointStoreMetrics {
  endpoint: string;
  /** Entries waiting (including expired ones not yet deleted). */
  queueLength: number;
  queueLengthByPriority: Record<number, number>;
  /** Entries checkpointed (delivered) since the store was created. */
  checkpointed: number;
  /** Entries dropped because their TTL passed, since the store was created. */
  expired: number;
}

export interface StoreTotals {
  messages: number;
  bytes: number;
  maxMessages: number;
  maxBytes: number;
}

export const DEFAULT_MAX_BYTES = 2 * 1024 ** 3;
/**
 * The official device SDKs retry a send for up to 240 s (their operation timeout) before they
 * give up, over as many reconnections as that takes: a resend can come that late, so the window
 * covers it with a minute to spare for the reconnection itself.
 */
export const DEFAULT_RESEND_WINDOW_MS = 300_000;
export const DEFAULT_RESEND_WINDOW_ENTRIES = 100_000;
