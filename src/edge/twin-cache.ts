import type { TwinCollection } from '../model/twin.ts';
import { openNodeDb, type NodeDb } from '../store/db.ts';
import { identityKey } from '../model/identity.ts';

/**
 * The last twin properties a gateway saw from upstream for each identity it serves (its own
 * `$edgeHub` included), kept on disk so that a device reading its twin, and the gateway reading
 * its routes, get an answer while the parent is unreachable or after a restart.
 */

const SCHEMA: readonly string[] = [
  `CREATE TABLE twin_cache (
     identity TEXT PRIMARY KEY,
     desired TEXT NOT NULL,
     reported TEXT NOT NULL,
     updated_ms INTEGER NOT NULL
   );`,
];

export interface CachedTwin {
  desired: TwinCollection;
  reported: TwinCollection;
  /** When upstream last told us (epoch ms). */
  updatedMs: number;
}

export class TwinCache {
  private readonly s;

  constructor(private readonly db: NodeDb) {
    db.migrate('twin-cache', SCHEMA);
    const q = db.sqlite;
    this.s = {
      get: q.prepare('SELECT desired, reported, updated_ms FROM twin_cache WHERE identity = ?'),
      put: q.prepare(
        `INSERT INTO twin_cache (identity, desired, reported, updated_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT(identity) DO UPDATE SET desired = excluded.desired, reported = excluded.reported, updated_ms = excluded.updated_ms`,
      ),
      del: q.prepare("DELETE FROM twin_cache WHERE identity = ? OR identity LIKE ? ESCAPE '\\'"),
    };
  }

  static open(path: string): TwinCache {
    return new TwinCache(openNodeDb(path));
  }

  get(deviceId: string, moduleId?: string): CachedTwin | undefined {
    const row = this.s.get.get(identityKey(deviceId, moduleId)) as
      | { desired: string; reported: string; updated_ms: number }
      | undefined;
    if (!row) return undefined;
    try {
      return {
        desired: JSON.parse(row.desired) as TwinCollection,
        reported: JSON.parse(row.reported) as TwinCollection,
        updatedMs: row.updated_ms,
      };
    } catch {
      return undefined;
    }
  }

  /**
   * Both collections as upstream gave them (a full twin read). A collection cached with a
   * later `$version` stays: a read answered before a push that overtook it is older.
   */
  put(
    deviceId: string,
    moduleId: string | undefined,
    twin: { desired: TwinCollection; reported: TwinCollection },
  ): void {
    const cur = this.get(deviceId, moduleId);
    const desired = newer(cur?.desired, twin.desired ?? {});
    const reported = newer(cur?.reported, twin.reported ?? {});
    this.s.put.run(identityKey(deviceId, moduleId), JSON.stringify(desired), JSON.stringify(reported), Date.now());
  }

  /**
   * Merges a desired patch (JSON merge patch: null deletes) into the cached desired properties,
   * unless the cache already holds that version or a later one. Returns the merged collection.
   */
  mergeDesired(deviceId: string, moduleId: string | undefined, patch: TwinCollection): TwinCollection {
    const cur = this.get(deviceId, moduleId) ?? { desired: {}, reported: {}, updatedMs: 0 };
    const v = typeof patch.$version === 'number' ? patch.$version : undefined;
    const have = typeof cur.desired.$version === 'number' ? cur.desired.$version : undefined;
    if (v !== undefined && have !== undefined && v <= have) return cur.desired;
    const merged = mergePatch(cur.desired, patch) as TwinCollection;
    if (v !== undefined) merged.$version = v;
    this.s.put.run(identityKey(deviceId, moduleId), JSON.stringify(merged), JSON.stringify(cur.reported), Date.now());
    return merged;
  }

  /** Merges a reported patch the device made (accepted upstream) with its new version. */
  mergeReported(deviceId: string, moduleId: string | undefined, patch: Record<string, unknown>, version: number): void {
    const cur = this.get(deviceId, moduleId);
    if (!cur) return;
    const merged = mergePatch(cur.reported, patch) as TwinCollection;
    merged.$version = version;
    this.s.put.run(identityKey(deviceId, moduleId), JSON.stringify(cur.desired), JSON.stringify(merged), Date.now());
  }

  /** Forgets a device (with its modules) or one module. */
  forget(deviceId: string, moduleId?: string): void {
    if (moduleId !== undefined) this.s.del.run(identityKey(deviceId, moduleId), '\u0000');
    else this.s.del.run(deviceId, `${deviceId.replace(/[\\%_]/g, (c) => `\\${c}`)}/%`);
  }

  close(): void {
    this.db.close();
  }
}

/** `incoming`, unless `cached` carries a later `$version`. */
function newer(cached: TwinCollection | undefined, incoming: TwinCollection): TwinCollection {
  const a = cached?.$version;
  const b = incoming.$version;
  return typeof a === 'number' && typeof b === 'number' && a > b ? cached! : incoming;
}

/** RFC 7396 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> =
    target !== null && typeof target === 'object' && !Array.isArray(target)
      ? { ...(target as Record<string, unknown>) }
      : {};
  for (const [k, v] of Object.entries(patch as Record<string, unknown>)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}
