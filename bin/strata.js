#!/usr/bin/env node
// Runs the compiled JavaScript in dist/ (built by `npm install` or `npm run build`) when no source
// changed since it was built; otherwise, or with STRATA_FROM_SOURCE=1, the TypeScript sources
// through tsx, so an edit is never run stale, only slower to start.
import { readdirSync, statSync } from 'node:fs';

const src = new URL('../src/', import.meta.url);
const stamp = new URL('../dist/.built', import.meta.url);

/** The newest modification time under a folder; a folder's own time covers deleted files. */
function newest(dir) {
  let latest = statSync(dir).mtimeMs;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const url = new URL(entry.isDirectory() ? `${entry.name}/` : entry.name, dir);
    latest = Math.max(latest, entry.isDirectory() ? newest(url) : statSync(url).mtimeMs);
  }
  return latest;
}

function builtIsCurrent() {
  if (process.env.STRATA_FROM_SOURCE === '1') return false;
  try {
    return statSync(stamp).mtimeMs >= newest(src);
  } catch {
    return false; // no dist/ (not built, or installed without dev dependencies)
  }
}

if (builtIsCurrent()) {
  await import('../dist/cli/main.js');
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli/main.ts');
}
