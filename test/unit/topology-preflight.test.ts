import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { checkPortsFree, chooseHttpsPort } from '../../src/topology/preflight.ts';
import { parseTopology } from '../../src/topology/spec.ts';

test('up refuses early, naming the address and port, when a node port is already taken', async (t) => {
  const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
  const last = randomInt(2, 249);
  const topology = parseTopology(
    `hub:\n  address: ${base}.${last}\ngateways:\n  - { id: gw, parent: hub, address: ${base}.${last + 1} }\n`,
  );
  await checkPortsFree(topology); // nothing there yet

  const squatter = createServer();
  await new Promise<void>((resolve) => squatter.listen(9600, `${base}.${last + 1}`, resolve));
  t.after(() => new Promise<void>((resolve) => squatter.close(() => resolve())));
  await assert.rejects(checkPortsFree(topology), (err: Error) => {
    assert.equal(err.message, `already in use: ${base}.${last + 1}:9600 (gateway gw)`);
    return true;
  });
});

test('the HTTPS port: the file says, else 443 where it can be bound, else 8443 with the reason', async () => {
  const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
  const text = `hub:\n  address: ${base}.2\ngateways:\n  - { id: gw, parent: hub, address: ${base}.3 }\n`;
  // Tests run as root: 443 binds, so the default stays.
  assert.deepEqual(await chooseHttpsPort(parseTopology(text), {}), { port: 443 });
  const forced = await chooseHttpsPort(parseTopology(text), { STRATA_UNPRIVILEGED: '1' });
  assert.equal(forced.port, 8443);
  assert.match(
    forced.fallback ?? '',
    /^port 443 needs root or CAP_NET_BIND_SERVICE \(STRATA_UNPRIVILEGED=1\): HTTPS on 8443/,
  );
  // A port in the file wins, with nothing to say.
  assert.deepEqual(
    await chooseHttpsPort(parseTopology(`ports: { https: 9443 }\n${text}`), { STRATA_UNPRIVILEGED: '1' }),
    {
      port: 9443,
    },
  );
});

test('ports: https only, a port number; mqtt and amqp are refused with the reason', () => {
  const text = 'hub:\n  address: 127.10.0.1\ngateways:\n  - { id: gw, parent: hub, address: 127.10.0.2 }\n';
  assert.deepEqual(parseTopology(`ports:\n  https: 8443\n${text}`).ports, { https: 8443 });
  assert.equal(parseTopology(text).ports, undefined);
  assert.throws(
    () => parseTopology(`ports:\n  https: 70000\n${text}`),
    /line 2: ports: https must be a port number from 1 to 65535/,
  );
  assert.throws(
    () => parseTopology(`ports:\n  mqtt: 1883\n${text}`),
    /line 2: ports: mqtt cannot move: the device SDKs dial MQTT 8883 and AMQP 5671/,
  );
  assert.throws(
    () => parseTopology(`ports: 8443\n${text}`),
    /ports must be a mapping such as ports: \{ https: 8443 \}/,
  );
});
