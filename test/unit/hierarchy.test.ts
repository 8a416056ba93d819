import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  HierarchyError,
  MAX_EDGE_LAYERS,
  ancestry,
  checkCanBeParent,
  edgeLayerOf,
  edgeScopeFor,
  orphansOf,
  resolveScopes,
  type HierarchyNode,
  type HierarchyView,
} from '../../src/identity/hierarchy.ts';

/** A registry of nodes for the pure rules, with helpers to add devices the way the hub would. */
class World implements HierarchyView {
  nodes = new Map<string, HierarchyNode>();
  ownerOf(scope: string) {
    return [...this.nodes.values()].find((n) => n.isEdge && n.deviceScope === scope);
  }
  childrenOf(scope: string) {
    return [...this.nodes.values()].filter((n) => (n.isEdge ? n.parentScopes[0] === scope : n.deviceScope === scope));
  }
  edge(id: string, parent?: string): HierarchyNode {
    const r = resolveScopes(this, {
      deviceId: id,
      generationId: '1',
      isEdge: true,
      parentScopes: parent ? [this.scope(parent)] : undefined,
    });
    const n = { deviceId: id, isEdge: true, ...r };
    this.nodes.set(id, n);
    return n;
  }
  leaf(id: string, parent?: string): HierarchyNode {
    const r = resolveScopes(this, {
      deviceId: id,
      generationId: '1',
      isEdge: false,
      deviceScope: parent ? this.scope(parent) : undefined,
    });
    const n = { deviceId: id, isEdge: false, ...r };
    this.nodes.set(id, n);
    return n;
  }
  scope(id: string): string {
    return this.nodes.get(id)!.deviceScope;
  }
  /** Re-parents an existing edge device. */
  moveEdge(id: string, parent: string | undefined) {
    const existing = this.nodes.get(id)!;
    const r = resolveScopes(this, {
      deviceId: id,
      generationId: '1',
      isEdge: true,
      parentScopes: parent ? [this.scope(parent)] : [],
      existing,
    });
    this.nodes.set(id, { ...existing, ...r });
  }
}

function refused(code: string, fn: () => unknown): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof HierarchyError, `expected a HierarchyError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return true;
  });
}

test('an edge device owns ms-azure-iot-edge://{id}-{generationId}; a leaf takes its parent scope', () => {
  const w = new World();
  const top = w.edge('top');
  assert.equal(top.deviceScope, edgeScopeFor('top', '1'));
  assert.equal(top.deviceScope, 'ms-azure-iot-edge://top-1');
  assert.deepEqual(top.parentScopes, []);
  const leaf = w.leaf('leaf', 'top');
  assert.equal(leaf.deviceScope, top.deviceScope);
  assert.deepEqual(leaf.parentScopes, [top.deviceScope]);
});

test('an edge child keeps its own scope and lists the parent scope', () => {
  const w = new World();
  const top = w.edge('top');
  const mid = w.edge('mid', 'top');
  assert.equal(mid.deviceScope, 'ms-azure-iot-edge://mid-1');
  assert.deepEqual(mid.parentScopes, [top.deviceScope]);
  const leaf = w.leaf('leaf', 'mid');
  assert.deepEqual(ancestry(w, leaf), ['leaf', 'mid', 'top']);
});

test('a scope no edge device owns is InvalidDeviceScope, for leaves and edge devices', () => {
  const w = new World();
  w.edge('top');
  refused('InvalidDeviceScope', () =>
    resolveScopes(w, { deviceId: 'x', generationId: '1', isEdge: false, deviceScope: 'ms-azure-iot-edge://ghost-7' }),
  );
  refused('InvalidDeviceScope', () =>
    resolveScopes(w, { deviceId: 'x', generationId: '1', isEdge: true, parentScopes: ['random-scope'] }),
  );
});

test('only edge devices can be parents', () => {
  const w = new World();
  w.edge('top');
  const leaf = w.leaf('leaf', 'top');
  refused('ParentNotEdge', () => checkCanBeParent(leaf));
  // A leaf owns no scope: its deviceScope is its parent's, so naming it adopts the parent, and an
  // unparented leaf has none to name.
  const lonely = w.leaf('lonely');
  assert.equal(lonely.deviceScope, '');
  assert.doesNotThrow(() => checkCanBeParent(w.nodes.get('top')!));
});

test('one parent per device', () => {
  const w = new World();
  w.edge('a');
  w.edge('b');
  refused('MultipleParents', () =>
    resolveScopes(w, { deviceId: 'x', generationId: '1', isEdge: true, parentScopes: [w.scope('a'), w.scope('b')] }),
  );
  refused('MultipleParents', () =>
    resolveScopes(w, {
      deviceId: 'x',
      generationId: '1',
      isEdge: false,
      deviceScope: w.scope('a'),
      parentScopes: [w.scope('b')],
    }),
  );
});

test('no cycles: an edge device cannot sit below itself or its descendants', () => {
  const w = new World();
  w.edge('a');
  w.edge('b', 'a');
  w.edge('c', 'b');
  refused('HierarchyCycle', () => w.moveEdge('a', 'c'));
  refused('HierarchyCycle', () => w.moveEdge('a', 'a'));
  // Moving sideways is fine.
  w.edge('d');
  w.moveEdge('c', 'd');
  assert.deepEqual(w.nodes.get('c')!.parentScopes, [w.scope('d')]);
});

test(`at most ${MAX_EDGE_LAYERS} edge layers; leaves below the last layer are fine`, () => {
  const w = new World();
  w.edge('e1');
  for (let i = 2; i <= MAX_EDGE_LAYERS; i++) w.edge(`e${i}`, `e${i - 1}`);
  assert.equal(edgeLayerOf(w, w.nodes.get(`e${MAX_EDGE_LAYERS}`)!), MAX_EDGE_LAYERS);
  refused('HierarchyTooDeep', () => w.edge('e6', `e${MAX_EDGE_LAYERS}`));
  assert.doesNotThrow(() => w.leaf('leaf', `e${MAX_EDGE_LAYERS}`));
});

test('moving an edge subtree counts the layers below it', () => {
  const w = new World();
  w.edge('a1');
  w.edge('a2', 'a1');
  w.edge('a3', 'a2'); // chain of 3
  w.edge('b1');
  w.edge('b2', 'b1');
  w.edge('b3', 'b2'); // another chain of 3
  refused('HierarchyTooDeep', () => w.moveEdge('b1', 'a3')); // 3 + 3 = 6 layers
  w.moveEdge('b2', 'a2'); // b2, b3 under a2: 2 + 2 = 4 layers
  assert.equal(edgeLayerOf(w, w.nodes.get('b3')!), 4);
});

test("an edge device's scope cannot be changed or replaced by its parent's", () => {
  const w = new World();
  w.edge('top');
  const mid = w.edge('mid', 'top');
  refused('DeviceScopeImmutable', () =>
    resolveScopes(w, { deviceId: 'mid', generationId: '1', isEdge: true, deviceScope: w.scope('top'), existing: mid }),
  );
  // Sending its own scope back (as tools do after a read) is fine.
  const same = resolveScopes(w, {
    deviceId: 'mid',
    generationId: '1',
    isEdge: true,
    deviceScope: mid.deviceScope,
    existing: mid,
  });
  assert.deepEqual(same, { deviceScope: mid.deviceScope, parentScopes: mid.parentScopes });
});

test('updates that do not mention scopes keep the parent; an empty deviceScope removes a leaf parent', () => {
  const w = new World();
  w.edge('top');
  const leaf = w.leaf('leaf', 'top');
  assert.deepEqual(resolveScopes(w, { deviceId: 'leaf', generationId: '1', isEdge: false, existing: leaf }), {
    deviceScope: leaf.deviceScope,
    parentScopes: leaf.parentScopes,
  });
  // az-style remove: deviceScope cleared while the stale parentScopes is still in the body.
  assert.deepEqual(
    resolveScopes(w, {
      deviceId: 'leaf',
      generationId: '1',
      isEdge: false,
      deviceScope: '',
      parentScopes: leaf.parentScopes,
      existing: leaf,
    }),
    {
      deviceScope: '',
      parentScopes: [],
    },
  );
});

test('moving a leaf with a body read back from the hub: the new deviceScope wins over the stale parentScopes', () => {
  const w = new World();
  w.edge('p1');
  w.edge('p2');
  w.edge('p3');
  const leaf = w.leaf('leaf', 'p1');
  const moved = resolveScopes(w, {
    deviceId: 'leaf',
    generationId: '1',
    isEdge: false,
    deviceScope: w.scope('p2'),
    parentScopes: leaf.parentScopes,
    existing: leaf,
  });
  assert.deepEqual(moved, { deviceScope: w.scope('p2'), parentScopes: [w.scope('p2')] });
  // Naming a third parent in parentScopes is still a conflict.
  refused('MultipleParents', () =>
    resolveScopes(w, {
      deviceId: 'leaf',
      generationId: '1',
      isEdge: false,
      deviceScope: w.scope('p2'),
      parentScopes: [w.scope('p3')],
      existing: leaf,
    }),
  );
});

test('an edge device with children cannot become a leaf', () => {
  const w = new World();
  const top = w.edge('top');
  w.leaf('leaf', 'top');
  refused('DeviceHasChildren', () =>
    resolveScopes(w, { deviceId: 'top', generationId: '1', isEdge: false, existing: top }),
  );
});

test('a leaf that becomes an edge device keeps its parent and gets its own scope', () => {
  const w = new World();
  w.edge('top');
  const leaf = w.leaf('x', 'top');
  const r = resolveScopes(w, { deviceId: 'x', generationId: '9', isEdge: true, existing: leaf });
  assert.deepEqual(r, { deviceScope: 'ms-azure-iot-edge://x-9', parentScopes: [w.scope('top')] });
});

test('deleting a parent orphans its children and says which', () => {
  const w = new World();
  w.edge('top');
  w.edge('mid', 'top');
  w.leaf('l1', 'top');
  w.leaf('l2', 'mid');
  const orphans = orphansOf(w, w.scope('top'));
  assert.deepEqual(orphans.map((o) => o.node.deviceId).sort(), ['l1', 'mid']);
  const mid = orphans.find((o) => o.node.deviceId === 'mid')!;
  assert.deepEqual(
    { deviceScope: mid.deviceScope, parentScopes: mid.parentScopes },
    { deviceScope: w.scope('mid'), parentScopes: [] },
  );
  const l1 = orphans.find((o) => o.node.deviceId === 'l1')!;
  assert.deepEqual(
    { deviceScope: l1.deviceScope, parentScopes: l1.parentScopes },
    { deviceScope: '', parentScopes: [] },
  );
  assert.deepEqual(orphansOf(w, ''), []);
});
