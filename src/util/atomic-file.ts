import fs from 'node:fs';
import { dirname } from 'node:path';

/**
 * Replaces `path` with `text` so that a reader (or a restart after a crash) sees the old file or
 * the new one, never a part: written to a temporary file beside it, flushed, renamed over it.
 * When any step fails (a full disk) the temporary file is removed and the old file stays.
 * `mode` is the new file's (0o600 for secrets and what only this node reads).
 */
export function writeFileAtomic(path: string, text: string, mode = 0o666): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    const fd = fs.openSync(tmp, 'w', mode);
    try {
      fs.writeFileSync(fd, text);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, path);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  // The rename itself is durable once the directory is flushed; a failure here loses nothing.
  try {
    const dir = fs.openSync(dirname(path), 'r');
    try {
      fs.fsyncSync(dir);
    } finally {
      fs.closeSync(dir);
    }
  } catch {
    // some file systems cannot sync a directory
  }
}
