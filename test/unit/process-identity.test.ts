import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isSameProcess, parseProcStat, processStartTime } from '../../src/agent/process-identity.ts';

const fields = (state: string, start: string) =>
  `${state} 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 ${start} 20 21 22 23`.trim();

test('parseProcStat counts fields after the last parenthesis of the command name', () => {
  assert.deepEqual(parseProcStat(`1234 (node) ${fields('S', '98765')}`), { state: 'S', pgrp: 2, startTime: '98765' });
  // A command name holding spaces and ')' must not shift the fields.
  assert.deepEqual(parseProcStat(`1234 (a) b) c) ${fields('Z', '42')}`), { state: 'Z', pgrp: 2, startTime: '42' });
  assert.equal(parseProcStat('garbage'), undefined);
  assert.equal(parseProcStat('1 (x) S 1 2'), undefined);
});

test('a reused pid (same number, other start time) is not the recorded process', () => {
  const me = process.pid;
  const stat =
    (start: string, state = 'S') =>
    () => ({ state, pgrp: 1, startTime: start });
  if (process.platform === 'linux') {
    const real = processStartTime(me);
    assert.ok(real && /^\d+$/.test(real), `start time of this process: ${real}`);
    assert.equal(isSameProcess({ pid: me, startTime: real }), true);
    assert.equal(isSameProcess({ pid: me, startTime: String(BigInt(real) + 1n) }), false);
  }
  assert.equal(isSameProcess({ pid: me, startTime: '100' }, stat('100')), true);
  assert.equal(isSameProcess({ pid: me, startTime: '100' }, stat('200')), process.platform !== 'linux');
  // A zombie whose parent no longer reaps it has ended.
  assert.equal(isSameProcess({ pid: me, startTime: '100' }, stat('100', 'Z')), process.platform !== 'linux');
  // A pid that does not exist (beyond pid_max) is never the process.
  assert.equal(isSameProcess({ pid: 2 ** 30 }), false);
});
