// Whether dist/ (the compiled CLI) is current: built, and no file under src/ changed since.
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

export function distIsCurrent() {
  try {
    return statSync(stamp).mtimeMs >= newest(src);
  } catch {
    return false; // no dist/ (not built, or installed without dev dependencies)
  }
}
