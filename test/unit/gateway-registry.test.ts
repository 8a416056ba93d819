import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { GatewayRegistry } from '../../src/edge/gateway-registry.ts';
import { EngineError, httpStatusOf } from '../../src/model/errors.ts';
import { UpstreamDownError, twinRefusal } from '../../src/upstream/errors.ts';

/** A gateway registry whose parent answers every twin call with `failure`. */
function registryFailingWith(failure: unknown): GatewayRegistry {
  const scope = Object.assign(new EventEmitter(), { authChainOf: () => 'leaf;edge', edgeDeviceId: 'edge' });
  const twins = { get: () => undefined, put: () => undefined, mergeReported: () => undefined, forget: () => undefined };
  const channel = {
    twinGet: () => Promise.reject(failure),
    twinPatchReported: () => Promise.reject(failure),
    close: async () => undefined,
  };
  const upstream = { connected: true, openIdentity: () => channel };
  return new GatewayRegistry({ scope, twins, upstream } as never);
}

async function refusal(failure: unknown): Promise<EngineError> {
  const registry = registryFailingWith(failure);
  try {
    await registry.updateReported('leaf', undefined, { a: 1 });
  } catch (err) {
    assert.ok(err instanceof EngineError, String(err));
    return err;
  } finally {
    await registry.close();
  }
  assert.fail('the update should have been refused');
}

test("a parent's twin refusal is passed on with its status and the parent's own words, through any number of layers", async () => {
  const hubWords = 'reported properties would be 33802 bytes, more than the 32768 bytes IoT Hub allows';
  const atL1 = await refusal(
    twinRefusal(
      'PATCH',
      'device leaf',
      400,
      Buffer.from(JSON.stringify({ errorCode: 'ArgumentInvalid', message: hubWords })),
    ),
  );
  assert.equal(atL1.code, 'bad-request');
  assert.equal(atL1.message, hubWords);
  // L2 hears L1's answer as L1 sends it (status and message) and passes it on unchanged again.
  const atL2 = await refusal(
    twinRefusal(
      'PATCH',
      'device leaf',
      httpStatusOf(atL1),
      Buffer.from(JSON.stringify({ errorCode: 400001, message: atL1.message })),
    ),
  );
  assert.equal(atL2.message, hubWords);
  for (const [status, code] of [
    [401, 'unauthorized'],
    [403, 'forbidden'],
    [404, 'not-found'],
    [412, 'precondition'],
    [413, 'too-large'],
    [429, 'throttled'],
    [500, 'internal'],
  ] as const) {
    assert.equal(
      (await refusal(twinRefusal('PATCH', 'device leaf', status, Buffer.from('{"message":"x"}')))).code,
      code,
      `status ${status}`,
    );
  }
});

test('a fault of the gateway itself is an internal error, not "the parent is unreachable"; a lost link still is', async () => {
  const own = await refusal(new RangeError('Maximum call stack size exceeded'));
  assert.equal(own.code, 'internal');
  assert.doesNotMatch(own.message, /unreachable/);
  const lost = await refusal(new UpstreamDownError('the connection to the parent was lost'));
  assert.equal(lost.code, 'unavailable');
  assert.match(lost.message, /unreachable/);
});

test('a device that only connected holds no upstream channel; a subscription or a twin call opens one', async () => {
  const scope = Object.assign(new EventEmitter(), { authChainOf: () => 'leaf;edge', edgeDeviceId: 'edge' });
  const twins = { get: () => undefined, put: () => undefined, mergeReported: () => undefined, forget: () => undefined };
  const opened: string[] = [];
  const closed: string[] = [];
  const upstream = {
    connected: true,
    openIdentity: (id: { deviceId: string }) => {
      opened.push(id.deviceId);
      return {
        onMethod: () => undefined,
        twinPatchReported: async () => ({ version: 2 }),
        close: async () => void closed.push(id.deviceId),
      };
    },
  };
  const registry = new GatewayRegistry({ scope, twins, upstream } as never);
  try {
    for (const id of ['quiet', 'subscriber', 'reporter']) registry.setConnectionState(id, undefined, true);
    assert.deepEqual(opened, [], 'connecting alone opens nothing upstream');
    registry.subscriptionChanged({ deviceId: 'subscriber' }, 'methods', true);
    assert.deepEqual(opened, ['subscriber']);
    await registry.updateReported('reporter', undefined, { a: 1 });
    assert.deepEqual(opened, ['subscriber', 'reporter']);
    // Subscribed before its connection was known: opened as it connects.
    registry.subscriptionChanged({ deviceId: 'early' }, 'methods', true);
    assert.deepEqual(opened, ['subscriber', 'reporter']);
    registry.setConnectionState('early', undefined, true);
    assert.deepEqual(opened, ['subscriber', 'reporter', 'early']);
    for (const id of ['quiet', 'subscriber', 'reporter', 'early']) registry.setConnectionState(id, undefined, false);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(closed.sort(), ['early', 'reporter', 'subscriber']);
  } finally {
    await registry.close();
  }
});
