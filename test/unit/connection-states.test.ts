import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConnectionStates } from '../../src/hub/registry-runtime.ts';

test('an edge device shows the state of its $edgeHub link, the one a gateway opens', () => {
  const states = new ConnectionStates();
  assert.equal(states.json('gw', undefined).connectionState, 'Disconnected');
  states.set('gw', '$edgeHub', true, '2026-01-01T00:00:00Z');
  assert.deepEqual(states.json('gw', undefined), {
    connectionState: 'Connected',
    connectionStateUpdatedTime: '2026-01-01T00:00:00Z',
    lastActivityTime: '2026-01-01T00:00:00Z',
  });
  assert.equal(states.json('gw', '$edgeHub').connectionState, 'Connected');
  // Only for display: the device identity itself has no session.
  assert.equal(states.isConnected('gw', undefined), false);
  states.set('gw', '$edgeHub', false, '2026-01-01T00:01:00Z');
  assert.equal(states.json('gw', undefined).connectionState, 'Disconnected');
  assert.equal(states.json('gw', undefined).connectionStateUpdatedTime, '2026-01-01T00:01:00Z');
});

test('a device connected itself stays Connected whatever its modules do; other modules do not count', () => {
  const states = new ConnectionStates();
  states.set('d', undefined, true, '2026-01-01T00:00:00Z');
  states.set('d', '$edgeHub', false, '2026-01-01T00:02:00Z');
  assert.equal(states.json('d', undefined).connectionState, 'Connected');
  const other = new ConnectionStates();
  other.set('d', 'filter', true, '2026-01-01T00:00:00Z');
  assert.equal(other.json('d', undefined).connectionState, 'Disconnected');
});
