import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  PRESENCE_IDENTITY,
  PRESENCE_STATE,
  presenceAnnotations,
  readPresence,
} from '../../src/protocols/amqp/presence-link.ts';

test('a presence change reads back as it was written, devices and modules alike', () => {
  for (const change of [
    { identity: { deviceId: 'leaf-1' }, present: true, authChain: 'leaf-1;edge' },
    { identity: { deviceId: 'leaf-1', moduleId: 'sensor' }, present: true, authChain: 'leaf-1/sensor;leaf-1;edge' },
    { identity: { deviceId: 'leaf-1' }, present: false },
  ])
    assert.deepEqual(readPresence(presenceAnnotations(change)), change);
});

test('a presence transfer that names no state, no identity or a wrong one is refused with the reason', () => {
  assert.throws(() => readPresence(undefined), /names x-opt-strata-presence as "present" or "absent"/);
  assert.throws(
    () => readPresence({ [PRESENCE_STATE]: 'gone', [PRESENCE_IDENTITY]: 'leaf-1' }),
    /"present" or "absent"/,
  );
  assert.throws(() => readPresence({ [PRESENCE_STATE]: 'present' }), /names its identity/);
  for (const bad of ['', '/m', 'd/', 'd/m/x', 'x'.repeat(300)])
    assert.throws(
      () => readPresence({ [PRESENCE_STATE]: 'present', [PRESENCE_IDENTITY]: bad }),
      /is not a device or module id/,
      bad,
    );
});
