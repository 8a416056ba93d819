/**
 * The agent's sign-in to its parent's registry API: the edge device's id, and a SAS token for the
 * device itself when it holds its own key (SAS), or for its `$edgeHub` module when it was
 * provisioned by certificate and has only that module's key.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { parentRegistryLogin } from '../../src/edge/agent-host.ts';
import type { EdgeConfig } from '../../src/edge/config.ts';
import { parseSasToken, signatureMatches } from '../../src/identity/sas.ts';

const key = randomBytes(32).toString('base64');
const login = (method: 'sas' | 'x509') =>
  parentRegistryLogin({
    config: {
      provisioning: {
        authentication: method === 'sas' ? { method, deviceIdPk: key } : { method, identityCert: 'c', identityPk: 'k' },
      },
    } as unknown as EdgeConfig,
    deviceId: 'gw-l3',
    hubHostName: 'hub.example',
    edgeKey: () => key,
  })();

test('a SAS-provisioned device signs its own audience with its key', () => {
  const { username, password } = login('sas');
  assert.equal(username, 'gw-l3');
  const token = parseSasToken(password);
  assert.equal(decodeURIComponent(token.sr), 'hub.example/devices/gw-l3');
  assert.ok(signatureMatches(token, [key]));
  assert.ok(Number(token.se) * 1000 > Date.now() + 50 * 60_000, 'valid for about an hour');
});

test('a device provisioned by certificate signs for its $edgeHub module', () => {
  const { username, password } = login('x509');
  assert.equal(username, 'gw-l3');
  assert.equal(decodeURIComponent(parseSasToken(password).sr), 'hub.example/devices/gw-l3/modules/$edgeHub');
});
