/**
 * What the start-up warm-up (src/protocols/warm-up.ts) saves: the CPU time of the first batches
 * through the message path's codecs (PUBLISHes read, their topics and property bags decoded, a
 * relay batch encoded and decoded: one warm-up round is one such batch of 250 messages) in a
 * fresh process, cold and after `warmUpMessagePath()`. CPU time of the process, not wall time,
 * so other work on the machine moves it little. Each side runs in its own child process (V8's
 * compiled code is per process), alternating, `--rounds` times; medians.
 *
 *   node --import tsx bench/warm-up.ts [--rounds 7] [--batches 20]
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { median } from './common.ts';
import { warmUpMessagePath } from '../src/protocols/warm-up.ts';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '7' },
    batches: { type: 'string', default: '20' },
    child: { type: 'string' },
  },
});
const BATCHES = Number(args.batches);

if (args.child !== undefined) {
  // In the child: optionally warm up, then time each of the first batches (CPU us).
  let warmUp: { rounds: number; cpuUs: number } | undefined;
  if (args.child === 'warm') {
    const c0 = process.cpuUsage();
    const r = warmUpMessagePath();
    const c = process.cpuUsage(c0);
    warmUp = { rounds: r.rounds, cpuUs: c.user + c.system };
  }
  const perBatch: number[] = [];
  for (let i = 0; i < BATCHES; i++) {
    const c0 = process.cpuUsage();
    warmUpMessagePath({ rounds: 1, budgetMs: 60_000 });
    const c = process.cpuUsage(c0);
    perBatch.push(c.user + c.system);
  }
  process.stdout.write(`${JSON.stringify({ warmUp, perBatch })}\n`);
  process.exit(0);
}

const self = fileURLToPath(import.meta.url);
const run = (side: 'cold' | 'warm') =>
  JSON.parse(
    execFileSync(process.execPath, ['--import', 'tsx', self, '--child', side, '--batches', String(BATCHES)], {
      encoding: 'utf8',
    }),
  ) as { warmUp?: { rounds: number; cpuUs: number }; perBatch: number[] };
const sides = { cold: [] as number[][], warm: [] as number[][], warmUpUs: [] as number[] };
for (let r = 0; r < Number(args.rounds); r++) {
  sides.cold.push(run('cold').perBatch);
  const w = run('warm');
  sides.warm.push(w.perBatch);
  sides.warmUpUs.push(w.warmUp!.cpuUs);
}
const ms = (us: number) => Math.round(us / 100) / 10;
const firstN = (runs: number[][], n: number) => median(runs.map((b) => b.slice(0, n).reduce((a, x) => a + x, 0)));
const last = (runs: number[][]) => median(runs.map((b) => b[b.length - 1]!));
process.stdout.write(
  `${JSON.stringify({
    batch_messages: 250,
    rounds: Number(args.rounds),
    cold_first_batch_cpu_ms: ms(median(sides.cold.map((b) => b[0]!))),
    warm_first_batch_cpu_ms: ms(median(sides.warm.map((b) => b[0]!))),
    cold_first_10_batches_cpu_ms: ms(firstN(sides.cold, 10)),
    warm_first_10_batches_cpu_ms: ms(firstN(sides.warm, 10)),
    cold_batch_20_cpu_ms: ms(last(sides.cold)),
    warm_up_cpu_ms: ms(median(sides.warmUpUs)),
  })}\n`,
);
