import assert from 'node:assert/strict';
import { test } from 'node:test';
import { countedEndpoint } from '../../src/routing/counted-endpoint.ts';
import type { DeliveryEndpoint } from '../../src/routing/pump.ts';
import type { QueuedMessage } from '../../src/store/message-store.ts';

const batch = (n: number) => Array.from({ length: n }, (_, i) => ({ seq: i + 1 }) as unknown as QueuedMessage);

test('a counted endpoint counts what was taken and passes every member the pump uses through', async () => {
  const calls: string[] = [];
  let fail = false;
  const inner: DeliveryEndpoint = {
    name: '$upstream',
    maxBatch: 500,
    maxInFlight: 2,
    send: async (b) => {
      calls.push(`send ${b.length}`);
      if (fail) throw new Error('parent gone');
    },
    isAvailable: () => {
      calls.push('isAvailable');
      return true;
    },
    onAvailable: () => {
      calls.push('onAvailable');
      return () => undefined;
    },
    rewind: () => void calls.push('rewind'),
  };
  const counts: number[] = [];
  const ep = countedEndpoint(inner, (n) => counts.push(n));
  assert.equal(ep.name, '$upstream');
  assert.equal(ep.maxBatch, 500);
  assert.equal(ep.maxInFlight, 2, 'batches in flight');
  await ep.send(batch(3));
  fail = true;
  await assert.rejects(ep.send(batch(4)), /parent gone/);
  assert.deepEqual(counts, [3], 'only what the endpoint took');
  assert.equal(ep.isAvailable?.(), true);
  ep.onAvailable?.(() => undefined);
  ep.rewind?.();
  assert.deepEqual(calls, ['send 3', 'send 4', 'isAvailable', 'onAvailable', 'rewind']);
  // Members the endpoint lacks stay absent, so the pump keeps its defaults.
  const bare = countedEndpoint({ name: 'm', maxBatch: 1, send: async () => undefined }, () => undefined);
  assert.deepEqual(Object.keys(bare).sort(), ['maxBatch', 'name', 'send']);
});
