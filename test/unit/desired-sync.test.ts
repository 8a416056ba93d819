import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import type { IdentityRef } from '../../src/model/identity.ts';
import type { TwinCollection, TwinProperties } from '../../src/model/twin.ts';
import { DesiredSync } from '../../src/edge/desired-sync.ts';
import { TwinCache } from '../../src/edge/twin-cache.ts';

const leaf: IdentityRef = { deviceId: 'leaf' };

function setup(t: import('node:test').TestContext, o: { deliver: boolean } = { deliver: true }) {
  const dir = mkdtempSync(join(tmpdir(), 'strata-desired-sync-'));
  const twins = TwinCache.open(join(dir, 'twins.db'));
  t.after(() => {
    twins.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const delivered: TwinCollection[] = [];
  let wanted = true;
  const sync = new DesiredSync({
    twins,
    deliver: (_id, patch) => {
      if (!o.deliver) return false;
      delivered.push(patch);
      return true;
    },
    wanted: () => wanted,
    log: pino({ level: 'silent' }),
    retryMs: 10,
  });
  t.after(() => sync.close());
  let upstream: TwinProperties = { desired: { $version: 1 }, reported: { $version: 1 } };
  let reads = 0;
  let failReads = 0;
  const fetch = async (): Promise<TwinProperties> => {
    reads++;
    if (failReads > 0) {
      failReads--;
      throw new Error('the parent did not answer');
    }
    return structuredClone(upstream);
  };
  return {
    twins,
    sync,
    delivered,
    fetch,
    reads: () => reads,
    setUpstream: (desired: TwinCollection) => (upstream = { desired, reported: { $version: 1 } }),
    failNextReads: (n: number) => (failReads = n),
    stopWanting: () => (wanted = false),
  };
}

const settle = () => new Promise((r) => setTimeout(r, 30));

test('a subscription confirmed after the parent moved on sends the difference from what was handed down, once', async (t) => {
  const s = setup(t);
  s.twins.put('leaf', undefined, {
    desired: { keep: 1, gone: true, nested: { a: 1, b: 2 }, $version: 4 },
    reported: { $version: 1 },
  });
  s.setUpstream({ keep: 1, nested: { a: 1, b: 3 }, added: 'x', $version: 6 });
  s.sync.live(leaf, s.fetch);
  await settle();
  assert.deepEqual(s.delivered, [{ gone: null, nested: { b: 3 }, added: 'x', $version: 6 }]);
  assert.equal(s.twins.get('leaf')?.desired.$version, 6);
  // The push of the same change, arriving after the read, is not handed down again.
  s.sync.pushed(leaf, { added: 'x', $version: 6 }, s.fetch);
  s.sync.live(leaf, s.fetch);
  await settle();
  assert.equal(s.delivered.length, 1);
});

test('pushes in sequence are handed down; a push after a gap reads the twin to catch up', async (t) => {
  const s = setup(t);
  s.twins.put('leaf', undefined, { desired: { mode: 'a', $version: 2 }, reported: { $version: 1 } });
  s.sync.pushed(leaf, { mode: 'b', $version: 3 }, s.fetch);
  await settle();
  assert.deepEqual(s.delivered, [{ mode: 'b', $version: 3 }]);
  assert.equal(s.reads(), 0);
  s.setUpstream({ mode: 'd', extra: 1, $version: 5 });
  s.sync.pushed(leaf, { mode: 'd', $version: 5 }, s.fetch);
  await settle();
  assert.equal(s.reads(), 1);
  assert.deepEqual(s.delivered[1], { mode: 'd', extra: 1, $version: 5 });
  assert.deepEqual(s.twins.get('leaf')?.desired, { mode: 'd', extra: 1, $version: 5 });
});

test('clearing every desired property upstream reaches the device as nulls', async (t) => {
  const s = setup(t);
  s.twins.put('leaf', undefined, { desired: { foo: 1, bar: { baz: 2 }, $version: 2 }, reported: { $version: 1 } });
  s.setUpstream({ $version: 3 });
  s.sync.live(leaf, s.fetch);
  await settle();
  assert.deepEqual(s.delivered, [{ foo: null, bar: null, $version: 3 }]);
});

test('what no session took is not counted as handed down: the next confirmation sends it', async (t) => {
  const session = { deliver: false };
  const s = setup(t, session);
  s.twins.put('leaf', undefined, { desired: { mode: 'a', $version: 2 }, reported: { $version: 1 } });
  s.sync.pushed(leaf, { mode: 'b', $version: 3 }, s.fetch);
  await settle();
  assert.equal(s.twins.get('leaf')?.desired.$version, 2);
  session.deliver = true;
  s.setUpstream({ mode: 'b', $version: 3 });
  s.sync.live(leaf, s.fetch);
  await settle();
  assert.deepEqual(s.delivered, [{ mode: 'b', $version: 3 }]);
});

test('with nothing handed down yet, the read becomes the baseline and nothing is sent', async (t) => {
  const s = setup(t);
  s.setUpstream({ mode: 'a', $version: 7 });
  s.sync.live(leaf, s.fetch);
  await settle();
  assert.deepEqual(s.delivered, []);
  assert.equal(s.twins.get('leaf')?.desired.$version, 7);
});

test('a failed read is tried again while the identity still subscribes', async (t) => {
  const s = setup(t);
  s.twins.put('leaf', undefined, { desired: { $version: 1 }, reported: { $version: 1 } });
  s.setUpstream({ mode: 'z', $version: 2 });
  s.failNextReads(2);
  s.sync.live(leaf, s.fetch);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(s.reads(), 3);
  assert.deepEqual(s.delivered, [{ mode: 'z', $version: 2 }]);

  s.setUpstream({ mode: 'y', $version: 3 });
  s.failNextReads(1);
  s.stopWanting();
  s.sync.live(leaf, s.fetch);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(s.reads(), 4, 'not tried again once nobody subscribes');
});

test('a twin read older than a push already cached does not take the cache back', (t) => {
  const s = setup(t);
  s.twins.put('leaf', undefined, { desired: { mode: 'a', $version: 2 }, reported: { $version: 1 } });
  s.twins.mergeDesired('leaf', undefined, { mode: 'b', $version: 3 });
  s.twins.put('leaf', undefined, { desired: { mode: 'a', $version: 2 }, reported: { r: 1, $version: 2 } });
  assert.deepEqual(s.twins.get('leaf')?.desired, { mode: 'b', $version: 3 });
  assert.deepEqual(s.twins.get('leaf')?.reported, { r: 1, $version: 2 });
});

test('a push after a gap answered by a twin older than the push is read again until the parent catches up', async (t) => {
  const s = setup(t);
  s.twins.put('leaf', undefined, { desired: { mode: 'a', $version: 2 }, reported: { $version: 1 } });
  s.setUpstream({ mode: 'a', $version: 2 });
  s.sync.pushed(leaf, { mode: 'd', $version: 4 }, s.fetch);
  await settle();
  assert.deepEqual(s.delivered, []);
  s.setUpstream({ mode: 'd', $version: 4 });
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(s.delivered, [{ mode: 'd', $version: 4 }]);
});
