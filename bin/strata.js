#!/usr/bin/env node
// Runs the compiled JavaScript in dist/ (built by `npm install` or `npm run build`) when no source
// changed since it was built; otherwise, or with STRATA_FROM_SOURCE=1, the TypeScript sources
// through tsx, so an edit is never run stale, only slower to start.
import { distIsCurrent } from './dist-state.js';

if (process.env.STRATA_FROM_SOURCE !== '1' && distIsCurrent()) {
  await import('../dist/cli/main.js');
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli/main.ts');
}
