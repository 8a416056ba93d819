import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { OriginWatermarks, type ForwardedOrigin } from '../../src/store/origin-watermarks.ts';
import { originOfBatch, ORIGIN_PREV, ORIGIN_SEQS, ORIGIN_STREAM } from '../../src/protocols/amqp/batch.ts';

const o = (stream: string, seq: number, prev: number): ForwardedOrigin => ({ stream, seq, prev });

/** Stores a run in one transaction, as a store's flush does; `fail` rolls it back. */
function storeRun(db: Database.Database, w: OriginWatermarks, run: ForwardedOrigin[], fail = false): void {
  let moved = new Map<string, number>();
  try {
    db.transaction(() => {
      moved = w.writeInTransaction(run);
      if (fail) throw new Error('disk full');
    })();
  } catch {
    return;
  }
  w.committedNow(moved);
}

test('a resend of what is stored is recognised; what follows is not', () => {
  const db = new Database(':memory:');
  const w = new OriginWatermarks(db);
  storeRun(db, w, [o('s', 3, 0), o('s', 7, 3), o('s', 9, 7)]);
  assert.equal(w.isStored(o('s', 3, 0)), true);
  assert.equal(w.isStored(o('s', 9, 7)), true);
  assert.equal(w.isStored(o('s', 12, 9)), false);
  assert.equal(w.isStored(o('other', 3, 0)), false, 'streams are apart');
});

test('the watermark moves only along an unbroken chain', () => {
  const db = new Database(':memory:');
  const w = new OriginWatermarks(db);
  storeRun(db, w, [o('s', 3, 0)]);
  // 5 follows 4, which never arrived (lost with a failed transfer): 5 is stored, the mark stays.
  storeRun(db, w, [o('s', 5, 4)]);
  assert.equal(w.isStored(o('s', 4, 3)), false, 'the missing one is not claimed');
  assert.equal(w.isStored(o('s', 5, 4)), false, 'beyond a gap nothing is claimed (a resend is stored twice, never lost)');
  // prev 0: the sender says everything before was acknowledged.
  storeRun(db, w, [o('s', 4, 0), o('s', 5, 4)]);
  assert.equal(w.isStored(o('s', 5, 4)), true);
});

test('a rolled-back transaction moves nothing; a reopened store remembers', () => {
  const db = new Database(':memory:');
  const w = new OriginWatermarks(db);
  storeRun(db, w, [o('s', 1, 0), o('s', 2, 1)]);
  storeRun(db, w, [o('s', 3, 2)], true);
  assert.equal(w.isStored(o('s', 3, 2)), false);
  const again = new OriginWatermarks(db);
  assert.equal(again.isStored(o('s', 2, 1)), true);
  assert.equal(again.isStored(o('s', 3, 2)), false);
});

test('batch origins from the wire are checked', () => {
  const ann = (seqs: string, prev = '0') => ({ [ORIGIN_STREAM]: 'store/0', [ORIGIN_PREV]: prev, [ORIGIN_SEQS]: seqs });
  assert.deepEqual(originOfBatch(ann('3,5,9', '2'), 3), { stream: 'store/0', prev: 2, seqs: [3, 5, 9] });
  assert.equal(originOfBatch(ann('3,5,9'), 2), undefined, 'one number per message');
  assert.equal(originOfBatch(ann('3,3,9'), 3), undefined, 'increasing');
  assert.equal(originOfBatch(ann('3,x,9'), 3), undefined);
  assert.equal(originOfBatch(ann('3', '3'), 1), undefined, 'after prev');
  assert.equal(originOfBatch(undefined, 1), undefined);
});
