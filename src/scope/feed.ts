import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import {
  parseIdentityKey,
  scopeMembers,
  scopeOwners,
  scopeViewOf,
  toScopeNode,
  type ScopeView,
} from '../identity/scope.ts';
import { identityKey } from '../model/identity.ts';
import type { FeedEvent, FeedPosition, IdentitySource } from './contract.ts';

/** One recorded change: which identity, and whose scope it touches. */
export interface FeedEntry {
  sequence: number;
  key: string;
  /** Edge devices that had or have the identity in their scope. */
  edges: string[];
}

/**
 * A numbered log of identity changes, each tagged with the edge devices whose scope it
 * touches (before and after the change, so an identity leaving a scope is announced to the
 * edge that loses it). Readers get the current state of each identity, never a stale copy,
 * so replaying any suffix of the log converges. Kept in memory: a restart starts a new epoch
 * and readers resynchronise, which is also the safe answer to anything lost in a crash.
 */
export class ScopeFeed {
  readonly epoch = randomBytes(6).toString('base64url');
  private seq = 0;
  private entries: FeedEntry[] = [];
  private readonly owners = new Map<string, string[]>();
  private readonly moduleKeys = new Map<string, Set<string>>();
  private readonly listeners = new Set<(e: FeedEntry) => void>();
  private unsubscribe?: () => void;
  private readonly view: ScopeView;

  constructor(
    private readonly source: IdentitySource,
    private readonly maxEntries = 10_000,
    private readonly log?: Logger,
  ) {
    this.view = scopeViewOf(source);
  }

  start(): void {
    for (const d of this.source.allDevices()) {
      const owners = scopeOwners(this.view, toScopeNode(d));
      this.setOwners(d.deviceId, owners);
      for (const m of this.source.listModules(d.deviceId)) this.setOwners(identityKey(d.deviceId, m.moduleId), owners);
    }
    this.unsubscribe = this.source.onIdentity((d, m) => {
      try {
        this.changed(d, m);
      } catch (err) {
        this.log?.error({ err, deviceId: d, moduleId: m }, 'scope feed could not record an identity change');
      }
    });
  }

  stop(): void {
    this.unsubscribe?.();
    this.listeners.clear();
  }

  get position(): FeedPosition {
    return { epoch: this.epoch, sequence: this.seq };
  }

  /**
   * The entries after `sequence` that concern `edge`, the latest per identity (each is read as
   * the identity's current state, so earlier ones add nothing), or undefined when they are no
   * longer all kept.
   */
  since(sequence: number, edge: string): FeedEntry[] | undefined {
    const oldest = this.entries[0]?.sequence ?? this.seq + 1;
    if (sequence > this.seq || sequence < oldest - 1) return undefined;
    const latest = new Map<string, FeedEntry>();
    for (const e of this.entries) if (e.sequence > sequence && e.edges.includes(edge)) latest.set(e.key, e);
    return [...latest.values()].sort((a, b) => a.sequence - b.sequence);
  }

  subscribe(fn: (e: FeedEntry) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** What an entry means to `edge` now: the identity as it is, or its removal from the scope. */
  eventFor(entry: FeedEntry, edge: string): FeedEvent {
    const ref = parseIdentityKey(entry.key);
    const remove: FeedEvent = {
      op: 'remove',
      sequence: entry.sequence,
      deviceId: ref.deviceId,
      ...(ref.moduleId ? { moduleId: ref.moduleId } : {}),
    };
    if (!(this.owners.get(entry.key) ?? []).includes(edge)) return remove;
    if (ref.moduleId !== undefined) {
      const m = this.source.getModule(ref.deviceId, ref.moduleId);
      return m ? { op: 'upsert', sequence: entry.sequence, module: m } : remove;
    }
    const d = this.source.getDevice(ref.deviceId);
    return d ? { op: 'upsert', sequence: entry.sequence, device: d } : remove;
  }

  private setOwners(key: string, owners: string[]): void {
    const ref = parseIdentityKey(key);
    if (owners.length === 0) {
      this.owners.delete(key);
      if (ref.moduleId !== undefined) this.moduleKeys.get(ref.deviceId)?.delete(key);
      return;
    }
    this.owners.set(key, owners);
    if (ref.moduleId !== undefined) {
      let set = this.moduleKeys.get(ref.deviceId);
      if (!set) this.moduleKeys.set(ref.deviceId, (set = new Set()));
      set.add(key);
    }
  }

  /** Recomputes the owners of one identity; appends an entry when forced or when they changed. */
  private refresh(key: string, force: boolean): string[] {
    const ref = parseIdentityKey(key);
    const old = this.owners.get(key) ?? [];
    let now: string[] = [];
    const device = this.source.getDevice(ref.deviceId);
    const exists =
      device !== undefined &&
      (ref.moduleId === undefined || this.source.getModule(ref.deviceId, ref.moduleId) !== undefined);
    if (exists) now = scopeOwners(this.view, toScopeNode(device));
    this.setOwners(key, now);
    if (force) this.append(key, [...new Set([...old, ...now])]);
    else {
      // Carried along by a move: only the edge devices that gained or lost it need to hear.
      const changed = [...old.filter((e) => !now.includes(e)), ...now.filter((e) => !old.includes(e))];
      if (changed.length > 0) this.append(key, changed);
    }
    return now;
  }

  private changed(deviceId: string, moduleId: string | undefined): void {
    if (moduleId !== undefined) {
      this.refresh(identityKey(deviceId, moduleId), true);
      return;
    }
    const before = this.owners.get(deviceId) ?? [];
    const after = this.refresh(deviceId, true);
    const moved = before.length !== after.length || before.some((e, i) => e !== after[i]);
    if (!moved) return;
    // The device changed place: its modules and, for an edge device, its whole subtree move too.
    const keys = new Set<string>();
    const addModules = (d: string) => {
      for (const k of this.moduleKeys.get(d) ?? []) keys.add(k);
      for (const m of this.source.listModules(d)) keys.add(identityKey(d, m.moduleId));
    };
    addModules(deviceId);
    if (before.includes(deviceId) || after.includes(deviceId)) {
      for (const [key, owners] of this.owners) if (owners.includes(deviceId) && key !== deviceId) keys.add(key);
      for (const n of scopeMembers(this.view, deviceId)) {
        if (n.deviceId === deviceId) continue;
        keys.add(n.deviceId);
        addModules(n.deviceId);
      }
    }
    // Devices before their modules, so a reader never sees a module of a device it lacks.
    const ordered = [...keys].sort((a, b) => Number(a.includes('/')) - Number(b.includes('/')));
    for (const key of ordered) this.refresh(key, false);
  }

  private append(key: string, edges: string[]): void {
    if (edges.length === 0) return;
    const entry: FeedEntry = { sequence: ++this.seq, key, edges };
    this.entries.push(entry);
    // Trimmed in steps, not on every append.
    if (this.entries.length > this.maxEntries + Math.max(1, Math.floor(this.maxEntries / 10))) {
      this.entries.splice(0, this.entries.length - this.maxEntries);
    }
    for (const fn of [...this.listeners]) {
      try {
        fn(entry);
      } catch (err) {
        this.log?.error({ err }, 'scope feed reader failed');
      }
    }
  }
}
