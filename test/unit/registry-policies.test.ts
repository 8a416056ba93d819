import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AccessDenied,
  authenticatePolicyToken,
  generateDefaultPolicies,
  hasRight,
  requireRight,
  type AccessPolicy,
} from '../../src/identity/policies.ts';
import { createSasToken } from '../../src/identity/sas.ts';

const policies = generateDefaultPolicies();
const byName = (n: string) => policies.find((p) => p.keyName === n);
const opts = { hostnames: ['hub.test'], policy: byName };
const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

function denied(fn: () => unknown, part: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof AccessDenied, String(err));
    assert.equal(err.status, 401);
    assert.match(err.message, part);
    return true;
  });
}

test('the five IoT Hub policies exist with distinct generated keys and their rights', () => {
  assert.deepEqual(
    policies.map((p) => p.keyName),
    ['iothubowner', 'service', 'device', 'registryRead', 'registryReadWrite'],
  );
  const keys = new Set(policies.flatMap((p) => [p.primaryKey, p.secondaryKey]));
  assert.equal(keys.size, 10);
  const owner = byName('iothubowner')!;
  assert.ok(
    ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect'].every((r) => hasRight(owner, r as never)),
  );
  assert.equal(hasRight(byName('registryRead')!, 'RegistryWrite'), false);
  assert.equal(hasRight(byName('registryReadWrite')!, 'RegistryRead'), true);
  assert.equal(hasRight(byName('service')!, 'RegistryRead'), false);
  assert.equal(hasRight(byName('device')!, 'ServiceConnect'), false);
});

test('a policy token signed with either key is accepted, as the SDK writes it', () => {
  const owner = byName('iothubowner')!;
  for (const key of [owner.primaryKey, owner.secondaryKey]) {
    const token = createSasToken('hub.test', key, inAnHour(), 'iothubowner');
    assert.equal(authenticatePolicyToken(token, opts).policy.keyName, 'iothubowner');
  }
  // Host names compare case-insensitively.
  const raw = createSasToken('HUB.test', owner.primaryKey, inAnHour(), 'iothubowner');
  assert.equal(authenticatePolicyToken(raw, opts).policy.keyName, 'iothubowner');
});

test('bad, expired, foreign, unknown-policy and device tokens are refused with a reason', () => {
  const owner = byName('iothubowner')!;
  denied(() => authenticatePolicyToken(undefined, opts), /no Authorization header/);
  denied(() => authenticatePolicyToken('Bearer abc', opts), /malformed/);
  denied(
    () =>
      authenticatePolicyToken(
        createSasToken('hub.test', owner.primaryKey, Math.floor(Date.now() / 1000) - 10, 'iothubowner'),
        opts,
      ),
    /expired/,
  );
  denied(
    () => authenticatePolicyToken(createSasToken('other.hub', owner.primaryKey, inAnHour(), 'iothubowner'), opts),
    /does not name this hub/,
  );
  denied(
    () =>
      authenticatePolicyToken(
        createSasToken('hub.test', byName('service')!.primaryKey, inAnHour(), 'iothubowner'),
        opts,
      ),
    /signature/,
  );
  denied(
    () => authenticatePolicyToken(createSasToken('hub.test', owner.primaryKey, inAnHour(), 'nobody'), opts),
    /unknown shared access policy/,
  );
  const deviceKey = Buffer.alloc(32, 1).toString('base64');
  denied(
    () => authenticatePolicyToken(createSasToken('hub.test/devices/d1', deviceKey, inAnHour()), opts),
    /not a device key/,
  );
});

test('a token scoped to a path only covers that path', () => {
  const owner = byName('iothubowner')!;
  const token = createSasToken('hub.test/devices/d1', owner.primaryKey, inAnHour(), 'iothubowner');
  assert.ok(authenticatePolicyToken(token, { ...opts, resourcePath: '/devices/d1' }));
  assert.ok(authenticatePolicyToken(token, { ...opts, resourcePath: '/devices/d1/modules/m' }));
  denied(() => authenticatePolicyToken(token, { ...opts, resourcePath: '/devices/d10' }), /does not cover/);
});

test('requireRight names the missing right', () => {
  const reader: AccessPolicy = byName('registryRead')!;
  assert.doesNotThrow(() => requireRight(reader, ['RegistryRead'], 'read'));
  denied(
    () => requireRight(reader, ['RegistryWrite'], 'change the identity registry'),
    /registryRead may not change the identity registry: it needs RegistryWrite/,
  );
});
