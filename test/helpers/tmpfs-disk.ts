import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A real small file system that fills up: a tmpfs of its own (needs root), so writes fail with ENOSPC as on a full disk. */
export interface SmallDisk {
  dir: string;
  /** Writes a file until the file system is full; returns how many bytes it took. */
  fill(name?: string): number;
  /** Removes what fill() wrote. */
  free(name?: string): void;
}

/**
 * Mounts a tmpfs of `bytes` on a fresh directory and unmounts it when the test ends; undefined
 * when this process may not mount (not root, or no mount namespace), so the caller can skip.
 */
export function mountSmallDisk(t: { after(fn: () => unknown): void }, bytes: number): SmallDisk | undefined {
  const dir = mkdtempSync(join(tmpdir(), 'strata-smalldisk-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
  t.after(() => {
    try {
      execFileSync('umount', [dir], { stdio: 'pipe' });
    } catch {
      // Something still has a file open (a failed test's process): detach it now, freed when closed.
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
    }
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    dir,
    fill(name = 'filler') {
      const fd = openSync(join(dir, name), 'a');
      const chunk = Buffer.alloc(4096, 0x5a);
      let total = 0;
      try {
        for (;;) total += writeSync(fd, chunk);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      } finally {
        closeSync(fd);
      }
      return total;
    },
    free(name = 'filler') {
      rmSync(join(dir, name), { force: true });
    },
  };
}
