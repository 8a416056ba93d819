import fs from 'node:fs';
import type { Logger } from 'pino';
import { UserError } from '../util/errors.ts';

/**
 * Free space a store keeps on its disk by default: it refuses new messages below it. What it is
 * for: the WAL checkpoint (which grows the database file before the log can be emptied),
 * checkpoints of delivered messages, SQLite's shared-memory files and the small state files a
 * restart writes. 64 MiB is twice the log a checkpoint of ours ever has to copy (4000 pages
 * of 8 KiB, see `wal_autocheckpoint` in the stores).
 */
export const DEFAULT_DISK_RESERVE_BYTES = 64 * 1024 * 1024;

/** Far from the reserve, free space is measured at most this often (a statfs costs ~1 µs). */
const RELAXED_CHECK_MS = 500;
/** While full, at most this often (each measurement may try a checkpoint). */
const FULL_CHECK_MS = 250;
/** ... where "far" is this much above the reserve and the log together. */
const RELAXED_MARGIN_BYTES = 256 * 1024 * 1024;

/** True for a write that failed because the disk (or the file system's quota) is full. */
export function isDiskFull(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | undefined;
  const code = typeof e?.code === 'string' ? e.code : '';
  if (code === 'SQLITE_FULL' || code === 'ENOSPC' || code === 'EDQUOT') return true;
  // SQLite reports some failed writes of its shared memory or log as I/O errors naming errno 28.
  return (
    code.startsWith('SQLITE_IOERR') &&
    typeof e?.message === 'string' &&
    /ENOSPC|No space left|disk is full/i.test(e.message)
  );
}

export interface DiskHeadroomOptions {
  /** A directory on the disk the store writes to. */
  dir: string;
  /** The store's write-ahead log (its size counts against the free space: a checkpoint needs it). */
  walPath: string;
  /** Bytes to keep free (DEFAULT_DISK_RESERVE_BYTES); 0 refuses only once a write failed. */
  reserveBytes: number;
  /** Names the store in messages ("event stream", "message store"). */
  what: string;
  /** The setting that changes the reserve, for the message. */
  settingName: string;
  /** Copies the log into the database and empties it (PRAGMA wal_checkpoint(TRUNCATE)). */
  checkpoint: () => void;
  /** Bytes free inside the database file (its free pages), which new rows take before the file grows. */
  reusableBytes?: () => number;
  log: Logger;
  /** Free bytes of `dir` (tests); default statfs. */
  freeBytes?: (dir: string) => number;
}

/**
 * Keeps a store from filling its disk: before a commit that adds messages, `refusal()` measures
 * the free space and answers why the commit must not happen, if it must not. The rule: the space
 * left for new rows (free on the disk plus free pages inside the database, which a drained
 * store has) less the log a checkpoint still has to copy stays above the reserve, and the disk
 * itself keeps an eighth of the reserve for the log between checkpoints. When the log eats into
 * the reserve it is checkpointed and emptied first (so space freed by deletions or by the user
 * goes to the database, not to an ever longer log). A failed write with SQLITE_FULL or ENOSPC
 * (another program filled the disk) counts as full until the space is back.
 */
export class DiskHeadroom {
  private fullReason: string | undefined;
  private checkedAt = 0;
  private margin = 0;
  private lastFree = Infinity;
  private readonly freeOf: (dir: string) => number;

  constructor(private readonly o: DiskHeadroomOptions) {
    this.freeOf = o.freeBytes ?? statfsFree;
  }

  /**
   * Measures (when due) and answers why a commit adding messages must not happen now, or why
   * the store takes no new messages (health, a CONNECT): undefined when it does.
   */
  refusal(now = Date.now()): string | undefined {
    if (this.fullReason !== undefined)
      return now - this.checkedAt < FULL_CHECK_MS ? this.fullReason : this.measure(now);
    if (this.margin > RELAXED_MARGIN_BYTES && now - this.checkedAt < RELAXED_CHECK_MS) return undefined;
    return this.measure(now);
  }

  /**
   * True when the disk is near full (under twice the reserve, or a write failed): writes that
   * free space go in small commits then, each one's log fitting in what is left.
   */
  tight(now = Date.now()): boolean {
    this.refusal(now);
    return this.fullReason !== undefined || this.lastFree < 2 * this.o.reserveBytes;
  }

  /**
   * Before a commit that frees space (deletions) on a near-full disk: empties the log first (when
   * full, or when it holds more than a sixteenth of the reserve), so that the deletion's own log
   * pages find room on the disk.
   */
  beforeFreeing(): void {
    const full = this.fullReason !== undefined;
    if (!full && this.lastFree >= 2 * this.o.reserveBytes) return;
    const wal = walSize(this.o.walPath);
    if (wal === 0 || (!full && wal <= this.o.reserveBytes / 16)) return;
    try {
      this.o.checkpoint();
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message, what: this.o.what }, 'checkpoint to free space failed');
    }
  }

  /** A write failed: if for want of space, the store is full until a measurement says otherwise. */
  failed(err: unknown): boolean {
    if (!isDiskFull(err)) return false;
    this.margin = 0;
    this.checkedAt = Date.now();
    const free = this.safeFree();
    this.enter(
      `the disk holding ${this.o.dir} is full (${mib(free)} free): a write of the ${this.o.what} failed (${(err as Error).message})`,
    );
    return true;
  }

  /** Measures now (health checks, a timer while full). */
  measure(now = Date.now()): string | undefined {
    this.checkedAt = now;
    let free = this.safeFree();
    let wal = walSize(this.o.walPath);
    const logRoom = this.o.reserveBytes / 8;
    if (free - wal < this.o.reserveBytes && wal > logRoom) {
      try {
        this.o.checkpoint();
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message, what: this.o.what }, 'checkpoint to free space failed');
      }
      free = this.safeFree();
      wal = walSize(this.o.walPath);
    }
    let reusable = 0;
    try {
      reusable = this.o.reusableBytes?.() ?? 0;
    } catch {
      // counted as none
    }
    this.lastFree = free;
    this.margin = Math.min(free + reusable - wal - this.o.reserveBytes, free - logRoom);
    if (this.margin >= 0 && free > 0) {
      if (this.fullReason !== undefined) {
        this.o.log.warn(
          { what: this.o.what, freeBytes: free, reserveBytes: this.o.reserveBytes },
          `${this.o.what} takes new messages again: ${mib(free)} free on the disk of ${this.o.dir}`,
        );
        this.fullReason = undefined;
      }
      return undefined;
    }
    const logPart = wal > 0 ? ` and ${mib(wal)} of write-ahead log still to copy` : '';
    this.enter(
      `store full: the disk holding ${this.o.dir} has ${mib(free)} free${logPart}, under the reserve of ${mib(this.o.reserveBytes)} kept for checkpoints (${this.o.settingName}); new messages are refused until space is freed`,
    );
    return this.fullReason;
  }

  private enter(reason: string): void {
    const first = this.fullReason === undefined;
    this.fullReason = reason.startsWith('store full') ? reason : `store full: ${reason}`;
    if (first)
      this.o.log.error({ what: this.o.what, dir: this.o.dir, reserveBytes: this.o.reserveBytes }, this.fullReason);
  }

  private safeFree(): number {
    try {
      return this.freeOf(this.o.dir);
    } catch {
      return 0;
    }
  }
}

/** Bytes an unprivileged writer may still use on the file system holding `dir`. */
export function statfsFree(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

function walSize(path: string): number {
  try {
    return fs.statSync(path).size;
  } catch {
    return 0;
  }
}

export function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/**
 * Parses a reserve given in MiB (a setting's text or number): a clear error for anything but a
 * number of 0 or more.
 */
export function reserveBytesOf(value: unknown, where: string): number {
  const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) {
    throw new Error(`${where} must be a number of MiB, 0 or more, got ${JSON.stringify(value)}`);
  }
  return Math.round(n * 1024 * 1024);
}

/**
 * A start-up that failed for want of disk space, as one clear line (no stack): what is full and
 * what to do. Anything else is returned as it is.
 */
export function startFailure(err: unknown, dir: string, what: string): unknown {
  if (!isDiskFull(err)) return err;
  let free = 0;
  try {
    free = statfsFree(dir);
  } catch {
    // the message says "full" either way
  }
  return new UserError(
    `cannot start the ${what}: the disk holding ${dir} is full (${mib(free)} free; ${(err as Error).message})`,
    'Free space on that disk (or move the data directory to a larger one) and start again; the messages stored so far are kept',
  );
}
