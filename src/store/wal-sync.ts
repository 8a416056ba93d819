import fs from 'node:fs';
import path from 'node:path';
import { took, tracing } from '../util/latency-trace.ts';
import { childLog } from '../util/log.ts';

const log = childLog('store');

export interface SyncWaiter {
  resolve(): void;
  reject(err: Error): void;
}

/**
 * Makes SQLite commits durable off the event loop. The database runs in WAL mode with
 * synchronous=NORMAL, so COMMIT writes the log without waiting for the disk; this then
 * fdatasyncs the log file on libuv's thread pool and only after that settles the waiters of the
 * commits made so far. It is the flush synchronous=FULL would do inside COMMIT, but the process
 * keeps receiving and forwarding while the disk works, and every commit made during one
 * fdatasync shares the next. Under a busy disk one fsync can take tens of milliseconds, all of
 * it a stalled process when done inside COMMIT.
 */
export class WalSync {
  private fd: number | undefined;
  private waiting: SyncWaiter[] = [];
  private syncing: Promise<void> | undefined;

  /**
   * Opens the log for syncing, after making sure it and its directory entry are on disk.
   * `touch` runs a small write so that SQLite has created the log file.
   */
  constructor(
    private readonly dbPath: string,
    private readonly what: string,
    touch: () => void,
  ) {
    touch();
    this.fd = fs.openSync(dbPath + '-wal', 'r+');
    fs.fsyncSync(this.fd);
    const dir = fs.openSync(path.dirname(path.resolve(dbPath)), 'r');
    try {
      fs.fsyncSync(dir);
    } finally {
      fs.closeSync(dir);
    }
  }

  /** Settles `waiter` once everything committed so far is on disk. */
  add(waiter: SyncWaiter): void {
    this.waiting.push(waiter);
    this.start();
  }

  /** Adds several waiters (one commit's) and starts a sync. */
  addAll(waiters: readonly SyncWaiter[]): void {
    for (const w of waiters) this.waiting.push(w);
    this.start();
  }

  /** True while commits wait for, or are in, an fdatasync. */
  get busy(): boolean {
    return this.syncing !== undefined || this.waiting.length > 0;
  }

  /** Waits until every waiter added so far is settled, then closes the descriptor. */
  async close(): Promise<void> {
    while (this.busy) {
      this.start();
      await this.syncing;
    }
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private start(): void {
    if (this.syncing || this.waiting.length === 0 || this.fd === undefined) return;
    const cohort = this.waiting;
    this.waiting = [];
    const fd = this.fd;
    const t0 = tracing ? performance.now() : 0;
    this.syncing = new Promise<void>((done) => {
      fs.fdatasync(fd, (err) => {
        if (tracing) took(`${this.what}.fdatasync`, performance.now() - t0);
        let error: Error | null = err;
        if (!error) {
          try {
            // SQLite keeps its log for the life of the connection; should it ever replace the
            // file, the descriptor synced above is stale: sync the new one before settling.
            if (fs.fstatSync(fd).nlink === 0) {
              log.warn({ path: this.dbPath }, `${this.what}: write-ahead log was replaced; reopening it`);
              fs.closeSync(fd);
              this.fd = fs.openSync(this.dbPath + '-wal', 'r+');
              fs.fsyncSync(this.fd);
            }
          } catch (e) {
            error = e as Error;
          }
        }
        this.syncing = undefined;
        if (error) {
          log.error({ path: this.dbPath, err: error.message }, `${this.what} sync failed`);
          const failure = new Error(`not known to be on disk: ${error.message}`);
          for (const w of cohort) w.reject(failure);
        } else {
          for (const w of cohort) w.resolve();
        }
        done();
        this.start();
      });
    });
  }
}
