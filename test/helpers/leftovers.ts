import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Timers, sockets, file descriptors and the like this process holds, by kind. */
export function activeResources(): Record<string, number> {
  const count: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) count[kind] = (count[kind] ?? 0) + 1;
  return count;
}

/**
 * Runs `fn` with TMPDIR and the working directory pointed at empty directories of its own, so a
 * test can tell what `fn` left there from what other processes on the machine write meanwhile.
 */
export async function inOwnDirs(fn: (dirs: { tmp: string; cwd: string }) => Promise<void>): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'strata-own-dirs-'));
  const dirs = { tmp: join(root, 'tmp'), cwd: join(root, 'cwd') };
  mkdirSync(dirs.tmp);
  mkdirSync(dirs.cwd);
  const was = { tmpdir: process.env.TMPDIR, cwd: process.cwd() };
  try {
    process.env.TMPDIR = dirs.tmp;
    process.chdir(dirs.cwd);
    await fn(dirs);
  } finally {
    process.chdir(was.cwd);
    if (was.tmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = was.tmpdir;
    rmSync(root, { recursive: true, force: true });
  }
}
