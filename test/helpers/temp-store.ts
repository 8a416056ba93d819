import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MessageStore, type StoreSettings } from '../../src/store/message-store.ts';

export interface TempStore {
  dir: string;
  file: string;
  /** Opens the store file (no background sweep unless asked); every store opened is closed when the test ends, before the directory goes. */
  open(settings?: Partial<StoreSettings>): MessageStore;
}

/** A message store file in a fresh temporary directory, removed when the test ends. */
export function tempStore(t: { after: (fn: () => Promise<void>) => void }): TempStore {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-store-'));
  const stores: MessageStore[] = [];
  t.after(async () => {
    for (const s of stores) await s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const file = path.join(dir, 'q.db');
  return {
    dir,
    file,
    open(settings = {}) {
      const store = MessageStore.open({ path: file, sweepIntervalMs: 0, ...settings });
      stores.push(store);
      return store;
    },
  };
}
