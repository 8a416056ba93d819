import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ScopeCache } from '../../src/scope/cache.ts';
import type { IdentitySource } from '../../src/scope/contract.ts';
import { ScopeFeed } from '../../src/scope/feed.ts';
import { edgeScopeFor } from '../../src/identity/hierarchy.ts';
import {
  MAX_EDGE_LAYERS,
  ScopeError,
  buildAuthChain,
  chainVoidReason,
  formatAuthChain,
  isInScope,
  parseAuthChain,
  parentScopeOfNode,
  parseIdentityKey,
  scopeMembers,
  scopeOwners,
  toScopeNode,
  validateAuthChain,
  type ScopeDevice,
  type ScopeModule,
  type ScopeNode,
  type ScopeView,
} from '../../src/identity/scope.ts';
import { identityKey } from '../../src/model/identity.ts';

/**
 * Devices placed directly (no hierarchy rules), so the tests can also build what the hub
 * would refuse: six edge layers, or a loop left by a damaged store.
 */
class World implements ScopeView {
  nodes = new Map<string, ScopeNode>();
  device(id: string) {
    return this.nodes.get(id);
  }
  ownerOf(scope: string) {
    return [...this.nodes.values()].find((n) => n.isEdge && n.deviceScope === scope);
  }
  childrenOf(scope: string) {
    return [...this.nodes.values()].filter((n) => (n.isEdge ? n.parentScopes[0] === scope : n.deviceScope === scope));
  }
  edge(id: string, parent?: string): this {
    this.nodes.set(id, {
      deviceId: id,
      isEdge: true,
      deviceScope: edgeScopeFor(id, '1'),
      parentScopes: parent ? [this.scope(parent)] : [],
      status: 'enabled',
    });
    return this;
  }
  leaf(id: string, parent?: string): this {
    const s = parent ? this.scope(parent) : '';
    this.nodes.set(id, { deviceId: id, isEdge: false, deviceScope: s, parentScopes: s ? [s] : [], status: 'enabled' });
    return this;
  }
  scope(id: string): string {
    return this.nodes.get(id)!.deviceScope;
  }
  disable(id: string): this {
    this.nodes.get(id)!.status = 'disabled';
    return this;
  }
}

/**
 *        E1                 X (another top edge)
 *      /  |  \               \
 *    l1  l2   E2              x1
 *             |  \
 *            l3   E3
 *                  \
 *                   l4
 */
function sample(): World {
  return new World()
    .edge('E1')
    .leaf('l1', 'E1')
    .leaf('l2', 'E1')
    .edge('E2', 'E1')
    .leaf('l3', 'E2')
    .edge('E3', 'E2')
    .leaf('l4', 'E3')
    .edge('X')
    .leaf('x1', 'X')
    .leaf('loner');
}

function throwsScope(fn: () => unknown, code: ScopeError['code'], text?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ScopeError, `expected a ScopeError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (text) assert.match(err.message, text);
    return true;
  });
}

test('an edge device’s scope is itself and its whole subtree, nothing above or beside it', () => {
  const w = sample();
  assert.deepEqual(
    scopeMembers(w, 'E1')
      .map((n) => n.deviceId)
      .sort(),
    ['E1', 'E2', 'E3', 'l1', 'l2', 'l3', 'l4'],
  );
  assert.deepEqual(
    scopeMembers(w, 'E2')
      .map((n) => n.deviceId)
      .sort(),
    ['E2', 'E3', 'l3', 'l4'],
  );
  assert.deepEqual(
    scopeMembers(w, 'E3')
      .map((n) => n.deviceId)
      .sort(),
    ['E3', 'l4'],
  );
  assert.equal(scopeMembers(w, 'E1')[0]!.deviceId, 'E1', 'the edge device comes first');
  assert.deepEqual(
    scopeMembers(w, 'X')
      .map((n) => n.deviceId)
      .sort(),
    ['X', 'x1'],
  );
  assert.deepEqual(scopeMembers(w, 'l1'), [], 'a leaf has no scope');
  assert.deepEqual(scopeMembers(w, 'nobody'), []);

  assert.ok(isInScope(w, 'E1', { deviceId: 'l4' }), 'three layers down is in the top gateway’s scope');
  assert.ok(isInScope(w, 'E2', { deviceId: 'E2', moduleId: '$edgeHub' }), 'its own modules');
  assert.ok(!isInScope(w, 'E2', { deviceId: 'l1' }), 'a sibling’s leaf is not');
  assert.ok(!isInScope(w, 'E2', { deviceId: 'E1' }), 'the parent is not');
  assert.ok(!isInScope(w, 'E1', { deviceId: 'x1' }), 'another hierarchy is not');
  assert.ok(!isInScope(w, 'E1', { deviceId: 'loner' }));
  assert.ok(!isInScope(w, 'E1', { deviceId: 'ghost' }));

  assert.deepEqual(scopeOwners(w, w.device('l4')!), ['E3', 'E2', 'E1']);
  assert.deepEqual(scopeOwners(w, w.device('E2')!), ['E2', 'E1']);
  assert.deepEqual(scopeOwners(w, w.device('loner')!), []);
});

test('auth chains walk parentScopes from the target up to the acting edge device', () => {
  const w = sample();
  assert.deepEqual(buildAuthChain(w, { deviceId: 'l4' }, 'E1'), ['l4', 'E3', 'E2', 'E1']);
  assert.deepEqual(buildAuthChain(w, { deviceId: 'l4' }, 'E2'), ['l4', 'E3', 'E2'], 'the chain ends at the actor');
  assert.deepEqual(buildAuthChain(w, { deviceId: 'l4', moduleId: 'sensor' }, 'E3'), ['l4/sensor', 'l4', 'E3']);
  assert.deepEqual(buildAuthChain(w, { deviceId: 'E2', moduleId: '$edgeHub' }, 'E1'), ['E2/$edgeHub', 'E2', 'E1']);
  assert.deepEqual(buildAuthChain(w, { deviceId: 'E1' }, 'E1'), ['E1'], 'an edge device acting for itself');
  assert.equal(buildAuthChain(w, { deviceId: 'l1' }, 'E2'), undefined, 'E2 is not above l1');
  assert.equal(buildAuthChain(w, { deviceId: 'l1' }, 'l1'), undefined, 'a leaf never acts');
  assert.equal(buildAuthChain(w, { deviceId: 'ghost' }, 'E1'), undefined);
  assert.equal(formatAuthChain(buildAuthChain(w, { deviceId: 'l3' }, 'E1')!), 'l3;E2;E1');
});

test('chain text: parsing and its refusals', () => {
  assert.deepEqual(parseAuthChain('leaf;E2;E1'), ['leaf', 'E2', 'E1']);
  assert.deepEqual(parseAuthChain('d/m;d;E1'), ['d/m', 'd', 'E1']);
  throwsScope(() => parseAuthChain(''), 'bad-chain', /empty/);
  throwsScope(() => parseAuthChain(undefined), 'bad-chain');
  throwsScope(() => parseAuthChain('a;;b'), 'bad-chain', /empty element/);
  throwsScope(() => parseAuthChain('a;b;a'), 'bad-chain', /twice/);
  throwsScope(() => parseAuthChain('a;b/m;c'), 'bad-chain', /only the first element/);
  throwsScope(() => parseAuthChain('m/x;a;b;c;d;e;f;g'), 'too-deep', /8 elements/);
  assert.equal(identityKey('d', 'm'), 'd/m');
  assert.equal(identityKey('d'), 'd');
  assert.deepEqual(parseIdentityKey('d/$edgeHub'), { deviceId: 'd', moduleId: '$edgeHub' });
  assert.deepEqual(parseIdentityKey('d'), { deviceId: 'd' });
});

test('validation: element 0 is the target, the actor is last and above the target', () => {
  const w = sample();
  assert.deepEqual(validateAuthChain(w, 'l4;E3;E2', 'E2', { deviceId: 'l4' }), ['l4', 'E3', 'E2']);
  assert.deepEqual(
    validateAuthChain(w, 'l4/mod;E2', 'E2', { deviceId: 'l4', moduleId: 'mod' }),
    ['l4/mod', 'l4', 'E3', 'E2'],
    'a guessed middle is replaced by the real chain',
  );
  throwsScope(
    () => validateAuthChain(w, 'l3;E2', 'E2', { deviceId: 'l4' }),
    'target-mismatch',
    /starts with l3, not with l4/,
  );
  throwsScope(() => validateAuthChain(w, 'l4;E3', 'E2'), 'actor-mismatch', /must end with the acting edge device E2/);
  throwsScope(() => validateAuthChain(w, 'l1;E2', 'E2'), 'out-of-scope', /l1 is not in the scope of edge device E2/);
  throwsScope(() => validateAuthChain(w, 'x1;E1', 'E1'), 'out-of-scope');
  throwsScope(() => validateAuthChain(w, 'ghost;E1', 'E1'), 'not-found', /ghost is not registered/);
  throwsScope(() => validateAuthChain(w, 'l1;l2', 'l2'), 'not-edge', /not an IoT Edge device/);
  throwsScope(() => validateAuthChain(w, 'l1;nobody', 'nobody'), 'not-found');
});

test('a disabled edge device anywhere on the chain voids it', () => {
  const w = sample().disable('E2');
  throwsScope(() => validateAuthChain(w, 'l4;E3;E2;E1', 'E1'), 'void', /edge device E2 .* is disabled/);
  throwsScope(() => validateAuthChain(w, 'l3;E2', 'E2'), 'void');
  assert.deepEqual(
    validateAuthChain(w, 'l4;E3', 'E3'),
    ['l4', 'E3'],
    'a chain below the disabled edge device is still usable on its own',
  );
  assert.deepEqual(validateAuthChain(w, 'l1;E1', 'E1'), ['l1', 'E1'], 'siblings are not affected');
  assert.match(chainVoidReason(w, ['l4', 'E3', 'E2', 'E1']) ?? '', /E2/);
  assert.equal(chainVoidReason(w, ['l1', 'E1']), undefined);
  // A disabled leaf does not void its chain: its own status is authenticate()'s business.
  w.disable('l1');
  assert.equal(chainVoidReason(w, ['l1', 'E1']), undefined);
  assert.match(chainVoidReason(w, ['l9', 'E1']) ?? '', /l9 .* not known/);
});

test(`nesting is capped at ${MAX_EDGE_LAYERS} edge layers`, () => {
  const w = new World().edge('G1');
  for (let i = 2; i <= 6; i++) w.edge(`G${i}`, `G${i - 1}`);
  w.leaf('deep', 'G5').leaf('deeper', 'G6');

  // Five edge layers: the leaf under the fifth is in the top one's scope, with a full-length chain.
  assert.deepEqual(buildAuthChain(w, { deviceId: 'deep' }, 'G1'), ['deep', 'G5', 'G4', 'G3', 'G2', 'G1']);
  assert.deepEqual(buildAuthChain(w, { deviceId: 'deep', moduleId: 'm' }, 'G1'), [
    'deep/m',
    'deep',
    'G5',
    'G4',
    'G3',
    'G2',
    'G1',
  ]);
  assert.deepEqual(validateAuthChain(w, 'deep/m;deep;G5;G4;G3;G2;G1', 'G1'), [
    'deep/m',
    'deep',
    'G5',
    'G4',
    'G3',
    'G2',
    'G1',
  ]);

  // A sixth layer is beyond G1's reach, but within reach of G2.
  assert.equal(buildAuthChain(w, { deviceId: 'deeper' }, 'G1'), undefined);
  assert.equal(buildAuthChain(w, { deviceId: 'G6' }, 'G1'), undefined);
  throwsScope(
    () => validateAuthChain(w, 'deeper;G6;G5;G4;G3;G2;G1', 'G1'),
    'too-deep',
    /more than 5 edge layers below G1/,
  );
  assert.deepEqual(buildAuthChain(w, { deviceId: 'deeper' }, 'G2'), ['deeper', 'G6', 'G5', 'G4', 'G3', 'G2']);
  const g1 = scopeMembers(w, 'G1').map((n) => n.deviceId);
  assert.ok(g1.includes('deep') && g1.includes('G5'));
  assert.ok(!g1.includes('G6') && !g1.includes('deeper'), 'the sixth layer is not listed in the top scope');
  assert.ok(!isInScope(w, 'G1', { deviceId: 'deeper' }));
  assert.ok(isInScope(w, 'G2', { deviceId: 'deeper' }));
});

test('a loop left in a damaged store does not hang the rules', () => {
  const w = new World().edge('A').edge('B', 'A');
  // Point A at B: A -> B -> A.
  w.nodes.get('A')!.parentScopes = [w.scope('B')];
  w.leaf('l', 'B');
  assert.deepEqual(buildAuthChain(w, { deviceId: 'l' }, 'A'), ['l', 'B', 'A']);
  assert.equal(buildAuthChain(w, { deviceId: 'l' }, 'C'), undefined);
  assert.deepEqual(
    scopeMembers(w, 'A')
      .map((n) => n.deviceId)
      .sort(),
    ['A', 'B', 'l'],
  );
});

// ---------------------------------------------------------------------------------------------
// The change feed's routing and the cache's events, over in-memory and temp-file stores.

/** An IdentitySource over maps, firing change events the way the registry does (after the change). */
class MemorySource implements IdentitySource {
  readonly hostNames = ['hub.test'];
  devices = new Map<string, ScopeDevice>();
  modules = new Map<string, ScopeModule>();
  private readonly events = new EventEmitter();
  getDevice(id: string) {
    return this.devices.get(id);
  }
  getModule(d: string, m: string) {
    return this.modules.get(`${d}/${m}`);
  }
  listModules(d: string) {
    return [...this.modules.values()].filter((m) => m.deviceId === d);
  }
  allDevices() {
    return [...this.devices.values()];
  }
  edgeByScope(scope: string) {
    return [...this.devices.values()].find((d) => d.capabilities.iotEdge && d.deviceScope === scope);
  }
  childrenOfScope(scope: string) {
    return [...this.devices.values()].filter((d) => parentScopeOfNode(toScopeNode(d)) === scope);
  }
  onIdentity(fn: (d: string, m: string | undefined) => void) {
    this.events.on('identity', fn);
    return () => void this.events.off('identity', fn);
  }
  private fire(d: string, m?: string) {
    this.events.emit('identity', d, m);
  }
  put(id: string, o: { edge?: boolean; parent?: string; status?: 'enabled' | 'disabled' } = {}): this {
    const parentScope = o.parent ? this.devices.get(o.parent)!.deviceScope : '';
    const edge = o.edge ?? false;
    this.devices.set(id, {
      deviceId: id,
      generationId: '1',
      status: o.status ?? 'enabled',
      authentication: {
        type: 'sas',
        symmetricKey: { primaryKey: `k-${id}`, secondaryKey: null },
        x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
      },
      capabilities: { iotEdge: edge },
      deviceScope: edge ? edgeScopeFor(id, '1') : parentScope,
      parentScopes: parentScope ? [parentScope] : [],
    });
    this.fire(id);
    return this;
  }
  putModule(d: string, m: string): this {
    this.modules.set(`${d}/${m}`, {
      deviceId: d,
      moduleId: m,
      generationId: '1',
      authentication: this.devices.get(d)!.authentication,
    });
    this.fire(d, m);
    return this;
  }
  drop(id: string): this {
    for (const m of this.listModules(id)) {
      this.modules.delete(`${id}/${m.moduleId}`);
      this.fire(id, m.moduleId);
    }
    this.devices.delete(id);
    this.fire(id);
    return this;
  }
}

function feedOver(source: MemorySource, maxEntries?: number) {
  const feed = new ScopeFeed(source, maxEntries);
  feed.start();
  const seen: Array<{ key: string; edges: string[] }> = [];
  feed.subscribe((e) => seen.push({ key: e.key, edges: [...e.edges] }));
  /** What `edge` hears after `from`, as `+key` (upsert) and `-key` (remove). */
  const heard = (from: number, edge: string) =>
    feed.since(from, edge)!.map((e) => {
      const ev = feed.eventFor(e, edge);
      if (ev.op === 'remove') return `-${identityKey(ev.deviceId, ev.moduleId)}`;
      if (ev.op === 'upsert')
        return `+${'device' in ev ? ev.device.deviceId : identityKey(ev.module.deviceId, ev.module.moduleId)}`;
      return ev.op;
    });
  return { feed, seen, heard };
}

test('the feed tells each edge device about changes in its scope, and only those', () => {
  const src = new MemorySource()
    .put('E1', { edge: true })
    .put('E2', { edge: true, parent: 'E1' })
    .put('X', { edge: true });
  const { feed, heard } = feedOver(src);
  const start = feed.position.sequence;
  src.put('l1', { parent: 'E2' }).putModule('l1', 'm').put('x1', { parent: 'X' });
  assert.deepEqual(heard(start, 'E1'), ['+l1', '+l1/m']);
  assert.deepEqual(heard(start, 'E2'), ['+l1', '+l1/m']);
  assert.deepEqual(heard(start, 'X'), ['+x1']);

  // Moving a leaf across hierarchies: the old owners hear a removal, the new one an upsert.
  const beforeMove = feed.position.sequence;
  src.put('l1', { parent: 'X' });
  assert.deepEqual(heard(beforeMove, 'E1'), ['-l1', '-l1/m']);
  assert.deepEqual(heard(beforeMove, 'E2'), ['-l1', '-l1/m']);
  assert.deepEqual(heard(beforeMove, 'X'), ['+l1', '+l1/m']);
  // A later change inside X must not hide the removal from a reader catching up.
  src.put('l1', { parent: 'X', status: 'disabled' });
  assert.deepEqual(heard(start, 'E1'), ['-l1', '-l1/m']);
});

test('the feed moves a whole subtree when an edge device changes parent or is deleted', () => {
  const src = new MemorySource()
    .put('E1', { edge: true })
    .put('E2', { edge: true, parent: 'E1' })
    .put('E3', { edge: true, parent: 'E2' })
    .put('l3', { parent: 'E3' })
    .putModule('E3', '$edgeHub')
    .put('X', { edge: true });
  const { feed, heard } = feedOver(src);
  let from = feed.position.sequence;
  src.put('E2', { edge: true, parent: 'X' });
  assert.deepEqual(heard(from, 'E1').sort(), ['-E2', '-E3', '-E3/$edgeHub', '-l3']);
  assert.deepEqual(heard(from, 'X').sort(), ['+E2', '+E3', '+E3/$edgeHub', '+l3']);
  assert.deepEqual(heard(from, 'E2').sort(), ['+E2'], 'below the moved device nothing changed for E2 itself');

  // Deleting E3 (its leaf is orphaned by the registry first, then its modules and itself go).
  from = feed.position.sequence;
  src.put('l3').drop('E3');
  assert.deepEqual(heard(from, 'X').sort(), ['-E3', '-E3/$edgeHub', '-l3']);
  assert.deepEqual(heard(from, 'E1'), [], 'E1 had already lost them');
});

test('a reader too far behind is told to resync', () => {
  const src = new MemorySource().put('E1', { edge: true });
  const { feed } = feedOver(src, 5);
  for (let i = 0; i < 20; i++) src.put(`l${i}`, { parent: 'E1' });
  assert.equal(feed.since(0, 'E1'), undefined, 'the oldest changes are no longer kept');
  assert.ok(feed.since(feed.position.sequence - 3, 'E1'));
  assert.equal(feed.since(feed.position.sequence + 1, 'E1'), undefined, 'a position from the future');
});

test('the cache: events from changes, not from repeats; one edge device per file; chains from its root', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-scope-cache-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const src = new MemorySource()
    .put('E1', { edge: true })
    .put('a', { parent: 'E1' })
    .put('E2', { edge: true, parent: 'E1' })
    .put('b', { parent: 'E2' });
  src.putModule('a', 'm');
  const cache = ScopeCache.open(join(dir, 'scope.db'), { edgeDeviceId: 'E1' });
  t.after(() => cache.close());
  const events: string[] = [];
  cache.on('identity', (d, m, kind) => events.push(`${kind} ${identityKey(d, m)}`));

  const devices = () => [...src.devices.values()].filter((d) => d.deviceId !== 'X');
  cache.replaceAll(devices(), [...src.modules.values()], { epoch: 'e', sequence: 1 });
  assert.deepEqual(events.sort(), ['created E1', 'created E2', 'created a', 'created a/m', 'created b']);
  events.length = 0;
  // The same listing again, with keys in another order: nothing changed, nothing said.
  const shuffled = devices().map(
    (d) => Object.fromEntries(Object.entries(structuredClone(d)).reverse()) as ScopeDevice,
  );
  assert.deepEqual(cache.replaceAll(shuffled, [...src.modules.values()], { epoch: 'e', sequence: 2 }), {
    created: 0,
    updated: 0,
    deleted: 0,
  });
  assert.deepEqual(events, []);
  assert.deepEqual(cache.position(), { epoch: 'e', sequence: 2 });

  cache.upsertDevice({ ...cache.getDevice('a')!, status: 'disabled' }, { epoch: 'e', sequence: 3 });
  cache.upsertDevice({ ...cache.getDevice('a')!, status: 'enabled' });
  cache.replaceAll(
    devices().filter((d) => d.deviceId !== 'a'),
    [],
    { epoch: 'e', sequence: 4 },
  );
  assert.deepEqual(events, ['disabled a', 'updated a', 'deleted a/m', 'deleted a']);
  assert.deepEqual(cache.position(), { epoch: 'e', sequence: 4 });

  assert.equal(cache.authChainOf('b'), 'b;E2;E1');
  assert.equal(cache.authChainOf('E1'), 'E1');
  assert.equal(cache.authChainOf('a'), undefined);
  assert.throws(() => cache.upsertDevice({ deviceId: 'bad' } as ScopeDevice), /device bad has status undefined/);
  assert.throws(
    () => ScopeCache.open(join(dir, 'scope.db'), { edgeDeviceId: 'E2' }),
    /belongs to edge device E1, not E2/,
  );

  // Lookups come from memory once read, and every write is seen by the next lookup.
  const b1 = cache.getDevice('b')!;
  assert.equal(cache.getDevice('b'), b1, 'the same object again');
  assert.throws(() => ((b1 as { status: string }).status = 'disabled'), TypeError, 'what is shared cannot be changed');
  assert.equal(cache.has('nobody'), false);
  cache.upsertDevice({ ...b1, status: 'disabled' });
  assert.equal(cache.getDevice('b')!.status, 'disabled');
  const e2 = cache.getDevice('E2')!;
  cache.upsertDevice({ ...e2, status: 'disabled' });
  assert.equal(cache.authChainOf('b'), undefined, 'a disabled gateway voids the chains below it');
  cache.upsertDevice({ ...e2, status: 'enabled' });
  assert.equal(cache.authChainOf('b'), 'b;E2;E1');
  cache.remove('b');
  assert.equal(cache.getDevice('b'), undefined);
  assert.equal(cache.has('b'), false);
  cache.upsertDevice({ ...b1, deviceId: 'nobody' });
  assert.equal(cache.has('nobody'), true, 'a miss is forgotten by the next write too');
});

test('the cache: a batch of feed changes is one transaction, its events fired once it committed', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-scope-batch-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const cache = ScopeCache.open(join(dir, 'scope.db'), { edgeDeviceId: 'E1' });
  t.after(() => cache.close());
  const events: string[] = [];
  cache.on('identity', (d, m, kind) => events.push(`${kind} ${identityKey(d, m)}`));
  const src = new MemorySource().put('E1', { edge: true }).put('a', { parent: 'E1' }).put('b', { parent: 'E1' });
  src.put('c', { parent: 'E1' });
  const leaf = (id: string): ScopeDevice => src.devices.get(id)!;
  cache.batch(() => {
    cache.upsertDevice(leaf('a'), { epoch: 'e', sequence: 1 });
    cache.upsertDevice(leaf('b'), { epoch: 'e', sequence: 2 });
    assert.deepEqual(events, [], 'nothing said before the commit');
  });
  assert.deepEqual(events, ['created a', 'created b']);
  assert.deepEqual(cache.position(), { epoch: 'e', sequence: 2 });
  // A change that fails undoes the whole batch: nothing stored, nothing said.
  events.length = 0;
  assert.throws(() =>
    cache.batch(() => {
      cache.upsertDevice(leaf('c'), { epoch: 'e', sequence: 3 });
      cache.upsertDevice({ deviceId: 'bad' } as ScopeDevice);
    }),
  );
  assert.deepEqual(events, []);
  assert.equal(cache.has('c'), false);
  assert.deepEqual(cache.position(), { epoch: 'e', sequence: 2 });
});
