#!/usr/bin/env node
// `npm run build`, also run by `npm install` (prepare): compiles src/ to dist/ so that the CLI
// starts without compiling TypeScript at run time. It only emits (noCheck in tsconfig.build.json);
// type errors are `npm run typecheck`'s job. dist/.built is stamped with the time the build
// started, so bin/strata.js can tell a source edited since then and run the sources instead.
import { spawnSync } from 'node:child_process';
import { rmSync, utimesSync, writeFileSync } from 'node:fs';
import { delimiter } from 'node:path';
import { fileURLToPath } from 'node:url';
import { distIsCurrent } from '../bin/dist-state.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const started = new Date();

// `npx strata` in the project installs it into npx's cache and so runs `prepare` again: a build
// that nothing changed since is skipped (`--force` builds anyway).
if (!process.argv.includes('--force') && distIsCurrent()) process.exit(0);

rmSync(dist, { recursive: true, force: true });
const tsc = spawnSync('tsc', ['-p', 'tsconfig.build.json'], {
  cwd: root,
  stdio: 'inherit',
  env: {
    ...process.env,
    PATH: [fileURLToPath(new URL('../node_modules/.bin', import.meta.url)), process.env.PATH].join(delimiter),
  },
});
if (tsc.error && tsc.error.code === 'ENOENT') {
  // An install without dev dependencies has no compiler: the CLI then runs the sources through tsx.
  console.log('strata: no TypeScript compiler installed, so no dist/; the CLI runs the sources (slower start)');
  process.exit(0);
}
if (tsc.status !== 0) {
  rmSync(dist, { recursive: true, force: true });
  console.error('strata: building dist/ failed; the CLI runs the sources until `npm run build` succeeds');
  process.exit(tsc.status ?? 1);
}
const stamp = `${dist}.built`;
writeFileSync(stamp, `${started.toISOString()}\n`);
utimesSync(stamp, started, started);
