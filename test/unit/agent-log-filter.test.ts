/**
 * GetModuleLogs filters as IoT Edge's schema has them (issue 19): since and until as durations,
 * unix timestamps or RFC 3339 times; loglevel from the `<N>` prefix of the recommended log
 * format; regex; tail taken last when level or regex narrow; each bad field named.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { answerAgentMethod } from '../../src/agent/agent-methods.ts';
import {
  filteredLines,
  lineLevel,
  lineTime,
  parseDuration,
  parseLogTime,
  readLogFilter,
  withinTime,
} from '../../src/agent/log-filter.ts';

const NOW = Date.parse('2026-12-07T14:00:00Z');

async function* each(lines: string[]): AsyncGenerator<string> {
  yield* lines;
}

test('durations as IoT Edge writes them', () => {
  assert.equal(parseDuration('10m'), 600);
  assert.equal(parseDuration('1 d'), 86400);
  assert.equal(parseDuration('90 m'), 5400);
  assert.equal(parseDuration('2 days 3 hours 2 minutes'), 2 * 86400 + 3 * 3600 + 120);
  assert.equal(parseDuration('1.5h'), 5400);
  for (const bad of ['', 'm', '10 parsecs', '10m garbage', '2026-12-07'])
    assert.equal(parseDuration(bad), undefined, bad);
});

test('since and until: a duration back from now, unix seconds or an RFC 3339 time', () => {
  assert.equal(parseLogTime('10m', NOW), NOW - 600_000);
  assert.equal(parseLogTime('1796652000', NOW), 1796652000_000);
  assert.equal(parseLogTime(1796652000, NOW), 1796652000_000);
  assert.equal(parseLogTime('2026-12-07T13:00:00Z', NOW), NOW - 3_600_000);
  assert.equal(parseLogTime('2026-12-07T15:00:00+02:00', NOW), NOW - 3_600_000);
  for (const bad of ['yesterday', '', '2026-13-45T00:00:00Z', -5, true])
    assert.equal(parseLogTime(bad, NOW), undefined);
});

test('a filter is read field by field; a bad field is named', () => {
  assert.deepEqual(readLogFilter(undefined, 'items[0]', NOW), {});
  const f = readLogFilter({ tail: 5, since: '1h', until: '10m', loglevel: 3, regex: 'err.r' }, 'items[0]', NOW);
  assert.equal(f.tail, 5);
  assert.equal(f.since, NOW - 3_600_000);
  assert.equal(f.until, NOW - 600_000);
  assert.equal(f.loglevel, 3);
  assert.ok(f.regex!.test('an error'));
  const cases: Array<[unknown, RegExp]> = [
    ['tail', /items\[1\]\.filter: must be an object/],
    [{ tail: -1 }, /items\[1\]\.filter\.tail: must be a whole number/],
    [{ since: 'last week' }, /items\[1\]\.filter\.since: "last week" is not a duration/],
    [{ until: 'soon' }, /items\[1\]\.filter\.until/],
    [{ since: '10m', until: '1h' }, /items\[1\]\.filter: since is after until/],
    [{ loglevel: 8 }, /items\[1\]\.filter\.loglevel: must be a syslog severity from 0 to 7/],
    [{ loglevel: 'info' }, /loglevel/],
    [{ regex: '(' }, /items\[1\]\.filter\.regex: "\(" is not a valid regular expression/],
    [{ regex: 5 }, /items\[1\]\.filter\.regex: must be a string/],
  ];
  for (const [raw, message] of cases) assert.throws(() => readLogFilter(raw, 'items[1]', NOW), message);
});

test("a line's level and time from the recommended format", () => {
  assert.equal(lineLevel('<3> 2026-12-07 13:59:00.000 +00:00 [ERR] broken'), 3);
  assert.equal(lineLevel('plain text'), 6, 'no prefix counts as informational');
  assert.equal(lineTime('<6> 2026-12-07 13:59:00.250 +00:00 [INF] fine'), Date.parse('2026-12-07T13:59:00.250Z'));
  assert.equal(lineTime('2026-12-07T15:59:00+0200 text'), Date.parse('2026-12-07T13:59:00Z'));
  assert.equal(lineTime('2026-12-07 13:59:00 no zone is UTC'), Date.parse('2026-12-07T13:59:00Z'));
  assert.equal(lineTime('no time here'), undefined);
});

test('loglevel and regex narrow, then tail takes the last of what they kept', async () => {
  const lines = ['<6> a ok', '<3> b failed', '<6> c ok', '<3> d failed', 'e plain', '<3> f failed'];
  const asked: Array<{ tail?: number }> = [];
  const read = async (opts: { tail?: number }) => {
    asked.push(opts);
    return each(opts.tail === undefined ? lines : lines.slice(-opts.tail));
  };
  assert.deepEqual(await filteredLines(read, { loglevel: 3, tail: 2 }), ['<3> d failed', '<3> f failed']);
  assert.equal(asked.at(-1)!.tail, undefined, 'the whole log is read when level or regex narrow');
  assert.deepEqual(await filteredLines(read, { regex: /ok|plain/ }), ['<6> a ok', '<6> c ok', 'e plain']);
  assert.deepEqual(await filteredLines(read, { loglevel: 6, regex: /plain/ }), ['e plain']);
  assert.deepEqual(await filteredLines(read, { tail: 1 }), ['<3> f failed']);
  assert.equal(asked.at(-1)!.tail, 1, 'a bare tail goes to the runtime');
  assert.deepEqual(await filteredLines(read, { loglevel: 3, tail: 0 }), []);
});

test("withinTime: by the lines' own times; an untimed line goes with the line before it", async () => {
  const lines = [
    'started before any time',
    '<6> 2026-12-07 12:00:00.000 +00:00 old',
    '  at old stack',
    '<6> 2026-12-07 13:30:00.000 +00:00 recent',
    '  at recent stack',
    '<6> 2026-12-07 13:50:00.000 +00:00 newest',
  ];
  const since = Date.parse('2026-12-07T13:00:00Z');
  const until = Date.parse('2026-12-07T13:40:00Z');
  const got = async (opts: Parameters<typeof withinTime>[1]) => {
    const out: string[] = [];
    for await (const l of withinTime(each(lines), opts)) out.push(l);
    return out;
  };
  assert.deepEqual(await got({ since }), [lines[0], lines[3], lines[4], lines[5]]);
  assert.deepEqual(await got({ since, until }), [lines[0], lines[3], lines[4]]);
  assert.deepEqual(await got({ since, tail: 2 }), [lines[4], lines[5]]);
});

test('GetModuleLogs applies the filter and names a bad one', async () => {
  const target = {
    moduleNames: () => ['m'],
    restartModule: async () => undefined,
    logs: async () => each(['<6> fine', '<4> careful', '<4> careful again']),
  };
  const call = (filter: unknown) =>
    answerAgentMethod(target, {
      requestId: '1',
      methodName: 'GetModuleLogs',
      payload: Buffer.from(JSON.stringify({ schemaVersion: '1.0', items: [{ id: 'm', filter }] })),
    });
  assert.deepEqual(await call({ loglevel: 4, regex: 'again' }), {
    status: 200,
    payload: [{ id: 'm', payload: '<4> careful again\n' }],
  });
  const bad = await call({ since: 'whenever' });
  assert.equal(bad.status, 400);
  assert.match((bad.payload as { message: string }).message, /items\[0\]\.filter\.since/);
});
