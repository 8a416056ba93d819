import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { checkPortsFree } from '../../src/topology/preflight.ts';
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
