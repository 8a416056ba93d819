import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const traceModule = fileURLToPath(new URL('../../src/util/latency-trace.ts', import.meta.url));

/** Runs `body` in a child process whose trace goes to a new directory; returns its report. */
function traced(body: string): Record<string, any> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-trace-test-'));
  try {
    const script = `
      const { mark, took } = await import(${JSON.stringify(traceModule)});
      ${body}
      // The report is written every second.
      await new Promise((r) => setTimeout(r, 1300));
      process.stdout.write(String(process.pid));
    `;
    const pid = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, STRATA_LATENCY_TRACE: dir },
      encoding: 'utf8',
    });
    return JSON.parse(readFileSync(join(dir, `${pid}.json`), 'utf8'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('durations: count, percentiles to 0.1 ms, the largest, and when they were recorded', () => {
  const r = traced(`for (let i = 1; i <= 100; i++) took('step', i / 10); took('step', 250);`);
  const step = r.step;
  assert.equal(step.n, 101);
  assert.equal(step.p50, 5.1);
  assert.equal(step.p99, 10);
  assert.equal(step.max, 250);
  assert.equal(step.span.length, 2, 'first and last time recorded');
  const [[, n, mean, max]] = step.perSecond;
  assert.equal(n, 101, 'all in one second');
  assert.equal(max, 250);
  assert.ok(Math.abs(mean - (5050 / 10 + 250) / 101) < 0.1, `mean ${mean}`);
  assert.ok(Array.isArray(r.stalls) && r.clocks.monoUs > 0, 'stalls and the clocks are reported');
});

test('ages of stamped bodies, per point, with the worst per 100 ms of the first 2 s', () => {
  const r = traced(`
    const now = Date.now();
    const body = (age) => { const b = Buffer.alloc(16); b.writeBigUInt64BE(BigInt(now - age)); return b; };
    mark('hop', body(40));
    mark('hop', body(10));
    // Not a stamp: a time in the future, and a body too short.
    const future = Buffer.alloc(8); future.writeBigUInt64BE(BigInt(now + 60_000)); mark('hop', future);
    mark('hop', Buffer.alloc(4));
  `);
  assert.equal(r.hop.n, 2, 'only the two stamped bodies count');
  assert.ok(r.hop.max >= 40 && r.hop.max < 1000, `max ${r.hop.max}`);
  const worst = r.hop.worstBy100msFirst2s.split(' ').map(Number);
  assert.ok(worst[0] >= 40, `the first 100 ms holds the oldest: ${r.hop.worstBy100msFirst2s}`);
});
