import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { pino, type Logger, type LoggerOptions } from 'pino';
import { SourceLogLimiter, boundedLines, sourceAddress, wireText } from '../../src/util/log.ts';

function capture(hooks?: LoggerOptions['hooks']) {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  const logger: Logger = pino({ base: undefined, ...(hooks ? { hooks } : {}) }, stream);
  return { logger, lines, flush: () => new Promise((r) => setImmediate(r)) };
}

test('wireText keeps short values and cuts long ones with a marker and the original length', () => {
  assert.equal(wireText('device-1'), 'device-1');
  const long = wireText('x'.repeat(65_535));
  assert.equal(long, `${'x'.repeat(128)}...[cut, 65535 chars]`);
  assert.equal(wireText(Buffer.from('abc')), 'abc');
  assert.equal(wireText('abcdef', 3), 'abc...[cut, 6 chars]');
});

test('sourceAddress takes the address of host:port, IPv4, IPv6 and mapped', () => {
  assert.equal(sourceAddress('127.0.0.1:5000'), '127.0.0.1');
  assert.equal(sourceAddress('::1:5000'), '::1');
  assert.equal(sourceAddress('::ffff:10.0.0.2:443'), '10.0.0.2');
});

test('SourceLogLimiter writes the first lines of each source, then one count per interval', async () => {
  const { logger, lines, flush } = capture();
  const limiter = new SourceLogLimiter({ burst: 3, intervalMs: 200 });
  for (let i = 0; i < 50; i++) limiter.warn(logger, '10.0.0.1', { i }, 'refused');
  for (let i = 0; i < 2; i++) limiter.warn(logger, '10.0.0.2', { i }, 'refused');
  await flush();
  assert.equal(lines.filter((l) => l.msg === 'refused').length, 5, 'three of the first source, two of the second');
  await new Promise((r) => setTimeout(r, 350));
  await flush();
  const summaries = lines.filter((l) => typeof l.msg === 'string' && (l.msg as string).includes('more from'));
  assert.equal(summaries.length, 1);
  assert.match(summaries[0]!.msg as string, /^47 more from 10\.0\.0\.1 \(last: refused\)$/);
  assert.equal(summaries[0]!.suppressed, 47);
  // A new interval starts afresh.
  limiter.warn(logger, '10.0.0.1', {}, 'again');
  await flush();
  assert.equal(lines.at(-1)!.msg, 'again');
});

test('log lines are bounded whatever the caller passed: long fields and messages are cut with their length', async () => {
  const { logger, lines, flush } = capture(boundedLines);
  const huge = 'y'.repeat(100_000);
  logger.warn({ clientId: huge, list: [huge], n: 1 }, `refused ${huge}`);
  logger.warn(huge);
  await flush();
  const [withFields, plain] = lines;
  assert.ok(JSON.stringify(withFields).length < 5000, 'one line stays a few KiB');
  assert.match(withFields!.clientId as string, /\.\.\.\[cut, 100000 chars\]$/);
  assert.match((withFields!.list as string[])[0]!, /\[cut, 100000 chars\]$/);
  assert.equal(withFields!.n, 1);
  assert.match(withFields!.msg as string, /\[cut, 100008 chars\]$/);
  assert.ok((plain!.msg as string).length < 2100);
});
