import assert from 'node:assert/strict';
import { test } from 'node:test';
import { logFormatFor, prettyLine } from '../../src/util/log-format.ts';

test('pretty on a terminal, JSON when piped, STRATA_LOG_FORMAT decides when set', () => {
  assert.equal(logFormatFor(undefined, true), 'pretty');
  assert.equal(logFormatFor(undefined, false), 'json');
  assert.equal(logFormatFor('json', true), 'json');
  assert.equal(logFormatFor(' Pretty ', false), 'pretty');
  assert.equal(logFormatFor('nonsense', false), 'json');
});

test('a JSON line becomes time, level, component, message and the other fields', () => {
  const time = new Date(2026, 0, 2, 3, 4, 5, 67).getTime();
  const line = JSON.stringify({
    level: 40,
    time,
    component: 'routes',
    msg: 'hello',
    deviceId: 'd 1',
    n: 3,
    ok: true,
  });
  assert.equal(prettyLine(line), '03:04:05.067 WARN  routes: hello  deviceId="d 1" n=3 ok=true\n');
  assert.ok(prettyLine(line, true).includes('\x1b[33mWARN \x1b[0m'), 'WARN in yellow on a terminal');
});

test('an error shows its message, and at ERROR its stack below; a line that is not JSON passes unchanged', () => {
  const line = JSON.stringify({
    level: 50,
    time: 0,
    msg: 'failed',
    err: { message: 'boom', stack: 'Error: boom\n    at f (x.ts:1:1)' },
  });
  const out = prettyLine(line);
  assert.match(out, /ERROR failed {2}err=boom\n {4}at f \(x\.ts:1:1\)\n$/);
  assert.equal(prettyLine('not json\n'), 'not json\n');
});
