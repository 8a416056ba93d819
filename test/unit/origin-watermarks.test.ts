import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { cover, OriginWatermarks, type OriginsMoved, type StreamCoverage } from '../../src/store/origin-watermarks.ts';
import type { ForwardedOrigin } from '../../src/model/message.ts';
import { originOfBatch, ORIGIN_PREV, ORIGIN_SEQS, ORIGIN_STREAM, readOrigin } from '../../src/protocols/amqp/batch.ts';

const o = (stream: string, seq: number, prev: number): ForwardedOrigin => ({ stream, seq, prev });

/** Stores a run in one transaction, as a store's flush does; `fail` rolls it back. */
function storeRun(db: Database.Database, w: OriginWatermarks, run: ForwardedOrigin[], fail = false): void {
  let moved: OriginsMoved = new Map();
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

test('the watermark moves only along an unbroken chain; what is stored beyond a gap is known too', () => {
  const db = new Database(':memory:');
  const w = new OriginWatermarks(db);
  storeRun(db, w, [o('s', 3, 0)]);
  // 5 follows 4, which never arrived (lost with a failed transfer): 5 is stored, the mark stays.
  storeRun(db, w, [o('s', 5, 4)]);
  assert.equal(w.isStored(o('s', 4, 3)), false, 'the missing one is not claimed');
  assert.equal(w.isStored(o('s', 5, 4)), true, 'a resend of what was stored beyond the gap is recognised');
  // prev 0: the sender says everything before was acknowledged.
  storeRun(db, w, [o('s', 4, 0)]);
  assert.equal(w.isStored(o('s', 4, 3)), true);
  assert.equal(w.isStored(o('s', 6, 5)), false);
  assert.equal(
    (db.prepare('SELECT count(*) AS n FROM origin_spans').get() as { n: number }).n,
    0,
    'the span joined the watermark',
  );
  assert.equal((db.prepare("SELECT seq FROM origins WHERE stream = 's'").get() as { seq: number }).seq, 5);
});

test('two batches in flight, the first lost: the second, stored beyond the gap, is not stored again when both are resent', () => {
  const db = new Database(':memory:');
  const w = new OriginWatermarks(db);
  storeRun(db, w, [o('leaf', 10, 0), o('leaf', 12, 10)]); // acknowledged earlier
  // Batch X (20, 21; prev 12) is lost; batch Y (30, 31; prev 21) arrives and is stored.
  storeRun(db, w, [o('leaf', 30, 21), o('leaf', 31, 30)]);
  // The sender rewinds and sends both again, the first with prev 0.
  const resend = [o('leaf', 20, 0), o('leaf', 21, 20), o('leaf', 30, 21), o('leaf', 31, 30)];
  assert.deepEqual(
    resend.map((r) => w.isStored(r)),
    [false, false, true, true],
  );
  storeRun(
    db,
    w,
    resend.filter((r) => !w.isStored(r)),
  );
  assert.equal(w.isStored(o('leaf', 31, 30)), true);
  // Reopened, the store knows the same (here the spans joined the mark; see the next test for spans).
  assert.equal(new OriginWatermarks(db).isStored(o('leaf', 31, 30)), true);
});

test('spans survive a restart, merge when they touch, and are capped', () => {
  const db = new Database(':memory:');
  const w = new OriginWatermarks(db);
  storeRun(db, w, [o('s', 1, 0), o('s', 9, 8), o('s', 20, 15)]);
  const again = new OriginWatermarks(db);
  assert.deepEqual(
    [1, 2, 9, 10, 16, 20, 21].map((seq) => again.isStored(o('s', seq, 0))),
    [true, false, true, false, true, true, false],
  );

  const c: StreamCoverage = { mark: 0, spans: [] };
  cover(c, 10, 12);
  cover(c, 20, 22);
  cover(c, 12, 20); // joins both
  assert.deepEqual(c.spans, [[10, 22]]);
  cover(c, 5, 7);
  assert.deepEqual(
    c.spans,
    [
      [5, 7],
      [10, 22],
    ],
    'kept in order',
  );
  cover(c, 0, 5);
  assert.deepEqual({ mark: c.mark, spans: c.spans }, { mark: 7, spans: [[10, 22]] });
  for (let i = 0; i < 100; i++) cover(c, 100 + 10 * i, 101 + 10 * i);
  assert.equal(c.spans.length, 64, 'at most 64 spans: the oldest go');
  assert.equal(c.spans[c.spans.length - 1]![1], 1091);
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

test('a batch origin that does not fit says what is wrong with it', () => {
  const ann = (seqs: string, prev: unknown = '0') => ({
    [ORIGIN_STREAM]: 'store/0',
    [ORIGIN_PREV]: prev,
    [ORIGIN_SEQS]: seqs,
  });
  assert.deepEqual(readOrigin(undefined, 2), {}, 'no origin is not a problem');
  assert.deepEqual(readOrigin({ other: 'x' }, 2), {});
  assert.match(
    readOrigin(ann('55,56', '55'), 2).problem ?? '',
    /must rise above x-opt-strata-prev \(55\).*found 55 after 55/,
  );
  assert.match(readOrigin(ann('1,2,3'), 2).problem ?? '', /names 3 numbers for 2 messages/);
  assert.match(readOrigin(ann('1', 'x'), 1).problem ?? '', /"x" is not a whole number/);
  assert.match(readOrigin({ [ORIGIN_STREAM]: '', [ORIGIN_SEQS]: '1' }, 1).problem ?? '', /1 to 256 characters/);
  assert.deepEqual(readOrigin(ann('4,9', '2'), 2), { origin: { stream: 'store/0', prev: 2, seqs: [4, 9] } });
});
