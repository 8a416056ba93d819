/**
 * `strata edge list` against a running gateway: its own modules, and the downstream identity
 * connected to it at that moment (and no longer once it disconnects).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { setupEdge, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { connectMqttLeaf } from '../helpers/mqtt-leaf.ts';

const run = promisify(execFile);
const cli = join(import.meta.dirname, '..', '..', 'bin', 'strata.js');

let hubDir: string;
let hub: HubProcess | undefined;
let edge: EdgeSetup;
let gw: GatewayProcess | undefined;

before(async () => {
  hubDir = await mkdtemp(join(tmpdir(), 'strata-hub-list-'));
  hub = await startHubProcess({ dataDir: hubDir, address: randomLoopback() });
  const address = randomLoopback();
  edge = await setupEdge(hub, { gatewayId: 'gw-list', address });
  gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address });
});
after(async () => {
  await gw?.stop();
  await hub?.stop();
  await edge?.cleanup();
  await rm(hubDir, { recursive: true, force: true });
});

async function list(): Promise<{ modules: string[]; connected: Array<{ deviceId: string; protocol: string }> }> {
  const { stdout } = await run(process.execPath, [cli, 'edge', 'list', '--data', edge.dataDir, '--json']);
  return JSON.parse(stdout);
}

test('edge list shows the gateway modules and who is connected now', async () => {
  const leaf = await edge.createLeaf('list-leaf');
  const before = await list();
  assert.ok(before.modules.includes('$edgeHub'), `modules: ${before.modules.join(',')}`);
  assert.ok(!before.connected.some((c) => c.deviceId === 'list-leaf'));

  const client = await connectMqttLeaf({
    address: edge.address,
    ca: edge.rootPem,
    hubHostName: hub!.hostname,
    deviceId: leaf.deviceId,
    key: leaf.key,
  });
  try {
    const during = await list();
    const entry = during.connected.find((c) => c.deviceId === 'list-leaf');
    assert.ok(entry, JSON.stringify(during.connected));
    assert.equal(entry.protocol, 'mqtt');
    const { stdout } = await run(process.execPath, [cli, 'edge', 'list', '--data', edge.dataDir]);
    assert.match(stdout, /CONNECTED \(1\)\n {2}list-leaf {2}mqtt/);
  } finally {
    await client.end();
  }
  const deadline = Date.now() + 5000;
  for (;;) {
    if (!(await list()).connected.some((c) => c.deviceId === 'list-leaf')) break;
    assert.ok(Date.now() < deadline, 'the leaf is still listed after it disconnected');
    await new Promise((r) => setTimeout(r, 100));
  }
});

test('edge list on a directory with no running gateway says what to do', async () => {
  const empty = await mkdtemp(join(tmpdir(), 'strata-no-gw-'));
  try {
    await assert.rejects(
      run(process.execPath, [cli, 'edge', 'list', '--data', empty]),
      (err: { code: number; stderr: string }) => {
        assert.equal(err.code, 1);
        assert.match(err.stderr, /no gateway is running from .*strata edge start/);
        assert.doesNotMatch(err.stderr, /\n\s+at /);
        return true;
      },
    );
  } finally {
    await rm(empty, { recursive: true, force: true });
  }
});
