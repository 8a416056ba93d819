import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AuthResult } from '../model/identity.ts';
import { MessageStore } from './message-store.ts';
import type { AppendEntry, AppendTarget } from './message-store/types.ts';
import { storedMessageOf } from './sender-message.ts';
import type { WarmUpResult } from '../util/warm-up.ts';

/**
 * The gateway's half of the start-up warm-up (protocols/warm-up.ts has the codecs): a throwaway
 * message store in a new temporary directory takes made-up messages, hands them out and
 * checkpoints them, as a gateway's store does every message, so that V8 has compiled the
 * append, commit, read and checkpoint code before the first device sends. The directory is
 * removed before this resolves, whatever happens; the gateway's own store is not touched.
 * STRATA_NO_WARM_UP=1 skips it, as it does the codecs' (util/warm-up.ts).
 */

const PER_ROUND = 250;
const SENDERS = 25;

export async function warmUpMessageStore(o: { budgetMs?: number; rounds?: number } = {}): Promise<WarmUpResult> {
  const budgetMs = o.budgetMs ?? 300;
  const maxRounds = o.rounds ?? 20;
  const t0 = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'strata-warm-up-'));
  let rounds = 0;
  try {
    const store = MessageStore.open({ path: join(dir, 'store.db') });
    try {
      const targets: AppendTarget[] = [{ endpoint: '$upstream', priority: 0, ttlSecs: 0 }];
      const senders: AuthResult[] = Array.from({ length: SENDERS }, (_, i) => ({
        identity: { deviceId: `warm-up-${i}` },
        kind: 'sas',
      })) as AuthResult[];
      let cursor = 0;
      // Checkpoints ride along with the next round's commit, as on a busy gateway.
      const checkpoints: Array<Promise<void>> = [];
      while (rounds < maxRounds && performance.now() - t0 < budgetMs) {
        const entries: AppendEntry[] = [];
        for (let i = 0; i < PER_ROUND; i++) {
          const body = Buffer.alloc(256, i & 0xff);
          const message = {
            body,
            messageId: `m${rounds}-${i}`,
            contentType: 'application/json',
            properties: { seq: String(i) },
          };
          entries.push({ message: storedMessageOf(senders[i % SENDERS]!, message), targets });
        }
        await store.appendAll(entries);
        const r = store.read('$upstream', { priority: 0, afterSeq: cursor, limit: PER_ROUND * 2 });
        if (r.entries.length !== PER_ROUND)
          throw new Error(`warm-up: read ${r.entries.length} of ${PER_ROUND} stored messages`);
        cursor = r.cursor;
        checkpoints.push(store.checkpoint('$upstream', r.entries));
        rounds++;
      }
      await Promise.all(checkpoints);
    } finally {
      await store.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { rounds, messages: rounds * PER_ROUND, ms: performance.now() - t0 };
}
