import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readLogLines, rotateIfOver, splitLines } from '../../src/agent/module-log.ts';

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const line of it) out.push(line);
  return out;
}

test('splitLines keeps an unfinished line, strips CR, and cuts a line without end', () => {
  const { lines, rest } = splitLines(Buffer.from('a\r\nb\nunfinished'));
  assert.deepEqual(lines, ['a', 'b']);
  assert.equal(rest.toString(), 'unfinished');
  const huge = splitLines(Buffer.alloc(64 * 1024 * 2 + 5, 'x'));
  assert.equal(huge.lines.length, 2);
  assert.equal(huge.rest.length, 5);
});

test('the rotated file is read first; tail counts across both; a second rotation replaces the first', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-modlog-'));
  try {
    const file = path.join(dir, 'output.log');
    fs.writeFileSync(file, '1\n2\n3\n');
    assert.equal(rotateIfOver(file, 100), false, 'under the cap');
    assert.equal(rotateIfOver(file, 4), true);
    assert.equal(fs.statSync(file).size, 0);
    fs.appendFileSync(file, '4\n5');
    assert.deepEqual(await collect(readLogLines(file)), ['1', '2', '3', '4', '5']);
    assert.deepEqual(await collect(readLogLines(file, { tail: 3 })), ['3', '4', '5']);
    assert.deepEqual(await collect(readLogLines(file, { tail: 0 })), []);
    fs.appendFileSync(file, '\n6\n');
    assert.equal(rotateIfOver(file, 4), true);
    assert.deepEqual(await collect(readLogLines(file)), ['4', '5', '6']);
    assert.equal(fs.existsSync(`${file}.2`), false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('follow yields complete new lines, across a rotation, and ends on abort', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-modlog-'));
  try {
    const file = path.join(dir, 'output.log');
    fs.writeFileSync(file, 'old\npart');
    const ac = new AbortController();
    const got: string[] = [];
    const reader = (async () => {
      for await (const l of readLogLines(file, { tail: 1, follow: true, signal: ac.signal, pollMs: 20 })) got.push(l);
    })();
    await new Promise((r) => setTimeout(r, 60));
    assert.deepEqual(got, ['old'], 'the unfinished line waits for its end');
    fs.appendFileSync(file, 'ial\nnext\n');
    await new Promise((r) => setTimeout(r, 80));
    // Written, then rotated before the follower looked: it reads the rest from the rotated copy.
    fs.appendFileSync(file, 'before-rotation\n');
    rotateIfOver(file, 1);
    fs.appendFileSync(file, 'after-rotation\n');
    await new Promise((r) => setTimeout(r, 80));
    ac.abort();
    await reader;
    assert.deepEqual(got, ['old', 'partial', 'next', 'before-rotation', 'after-rotation']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
