import type Database from 'better-sqlite3';

/**
 * How far each child stream may have been passed to the parent without being stored here
 * (edge/direct-forward.ts). A batch passed on that way is the child's until the parent answers;
 * if this process dies before the answer reaches the child, the child sends it again, and this
 * gateway must not then store it under its own numbering (the parent could hold it already, under
 * the child's). So before a batch goes, its highest number is on disk here, and after a restart
 * everything up to the mark is treated as possibly at the parent. Marks are written ahead of need
 * (`RESERVE` above the batch), so most batches find theirs on disk already and wait for nothing.
 */

/** How far above a batch's highest number a new mark reaches (numbers of the child's store). */
export const RESERVE = 100_000;

export class PassingMarks {
  /** Marks on disk, by stream (a commit's marks count once its sync is done). */
  private readonly written = new Map<string, number>();
  /** Marks as they were when the store opened: what a previous run may have passed on. */
  readonly atOpen: ReadonlyMap<string, number>;
  /** Marks to write with the next commit. */
  private pending = new Map<string, number>();
  private readonly upsert: Database.Statement;

  constructor(db: Database.Database) {
    db.exec('CREATE TABLE IF NOT EXISTS passing_marks (stream TEXT PRIMARY KEY, high INTEGER NOT NULL) WITHOUT ROWID');
    for (const row of db.prepare('SELECT stream, high FROM passing_marks').all() as Array<{
      stream: string;
      high: number;
    }>)
      this.written.set(row.stream, row.high);
    this.atOpen = new Map(this.written);
    this.upsert = db.prepare(
      'INSERT INTO passing_marks (stream, high) VALUES (?, ?) ON CONFLICT (stream) DO UPDATE SET high = excluded.high WHERE excluded.high > passing_marks.high',
    );
  }

  /** True when `seq` is covered by a mark on disk; otherwise asks the next commit for one. */
  covers(stream: string, seq: number): boolean {
    if (seq <= (this.written.get(stream) ?? 0)) return true;
    const next = seq + RESERVE;
    if (next > (this.pending.get(stream) ?? 0)) this.pending.set(stream, next);
    return false;
  }

  get hasPending(): boolean {
    return this.pending.size > 0;
  }

  /** Inside the commit: writes the requested marks. Returns them, to apply once committed. */
  writeInTransaction(): Map<string, number> {
    const marks = this.pending;
    this.pending = new Map();
    for (const [stream, high] of marks) this.upsert.run(stream, high);
    return marks;
  }

  /** The commit holding `marks` succeeded (on failure they are asked for again). */
  committed(marks: Map<string, number>): void {
    for (const [stream, high] of marks) if (high > (this.written.get(stream) ?? 0)) this.written.set(stream, high);
  }

  /** The commit failed: ask for them again with the next one. */
  failed(marks: Map<string, number>): void {
    for (const [stream, high] of marks) if (high > (this.pending.get(stream) ?? 0)) this.pending.set(stream, high);
  }
}
