/**
 * What a gateway shows to callers who have not proved anything (issue 17, finding 8):
 * - Prometheus metrics (plain HTTP, no authentication) listen on loopback by default, not on
 *   the gateway's own address where devices connect;
 * - `/health` answers anyone, but names the connected devices and modules only to a caller with
 *   the token the gateway keeps in its data directory; `strata edge list` shows it and keeps
 *   listing the connected identities.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { edgeFiles, readGatewayState } from '../../src/edge/local.ts';
import { setupEdge, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { connectMqttLeaf, type MqttLeaf } from '../helpers/mqtt-leaf.ts';

const run = promisify(execFile);
const cli = join(import.meta.dirname, '..', '..', 'bin', 'strata.js');

let hubDir: string;
let hub: HubProcess | undefined;
let edge: EdgeSetup;
let gw: GatewayProcess | undefined;
let leaf: MqttLeaf | undefined;

before(async () => {
  hubDir = await mkdtemp(join(tmpdir(), 'strata-hub-exposure-'));
  hub = await startHubProcess({ dataDir: hubDir, address: randomLoopback() });
  const address = randomLoopback();
  edge = await setupEdge(hub, { gatewayId: 'gw-exposed', address });
  gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address });
  const l = await edge.createLeaf('visible-leaf');
  leaf = await connectMqttLeaf({
    address,
    ca: edge.rootPem,
    hubHostName: hub.hostname,
    deviceId: l.deviceId,
    key: l.key,
  });
});
after(async () => {
  await leaf?.end();
  await gw?.stop();
  await hub?.stop();
  await edge?.cleanup();
  await rm(hubDir, { recursive: true, force: true });
});

function httpGet(host: string, port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host, port, path, timeout: 3000 }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('timeout', function (this: http.ClientRequest) {
        this.destroy(new Error('timed out'));
      })
      .on('error', reject);
  });
}

function health(headers: Record<string, string> = {}): Promise<{ status: number; text: string; body: any }> {
  return new Promise((resolve, reject) => {
    https
      .get({ host: edge.address, port: 443, path: '/health', ca: edge.rootPem, headers }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text, body: JSON.parse(text) }));
      })
      .on('error', reject);
  });
}

test("metrics are not reachable on the gateway's address; they answer on 127.0.0.1", async () => {
  const state = readGatewayState(edge.dataDir)!;
  const port = state.ports.metrics;
  await assert.rejects(
    httpGet(edge.address, port, '/metrics'),
    (err: NodeJS.ErrnoException) => err.code === 'ECONNREFUSED',
    `metrics answered on ${edge.address}:${port}`,
  );
  const local = await httpGet('127.0.0.1', port, '/metrics');
  assert.equal(local.status, 200);
  assert.match(local.body, /^edgehub_connected_clients\{edge_device="gw-exposed"\} 1$/m);
  assert.match(gw!.output(), new RegExp(`metrics\\s+http://127\\.0\\.0\\.1:${port}/metrics`));
});

test("/health names no device to an anonymous caller (nor to a wrong token); the data directory's token shows them", async () => {
  const anonymous = await health();
  assert.equal(anonymous.status, 200);
  assert.equal(anonymous.body.status, 'ok');
  assert.equal(anonymous.body.connectedClients, 1, 'counts are not identities');
  for (const key of ['deviceId', 'connected', 'modules', 'queues'])
    assert.equal(key in anonymous.body, false, `anonymous /health has ${key}`);
  assert.doesNotMatch(anonymous.text, /visible-leaf|gw-exposed/);

  assert.doesNotMatch((await health({ authorization: 'Bearer not-the-token' })).text, /visible-leaf|gw-exposed/);

  const token = readFileSync(edgeFiles(edge.dataDir).healthToken, 'utf8').trim();
  const detailed = await health({ authorization: `Bearer ${token}` });
  assert.equal(detailed.body.deviceId, 'gw-exposed');
  assert.deepEqual(
    detailed.body.connected.map((c: { deviceId: string }) => c.deviceId),
    ['visible-leaf'],
  );
});

test('`strata edge list` still lists the connected identities', async () => {
  const { stdout } = await run(process.execPath, [cli, 'edge', 'list', '--data', edge.dataDir, '--json']);
  const listed = JSON.parse(stdout) as { deviceId: string; connected: Array<{ deviceId: string }> };
  assert.equal(listed.deviceId, 'gw-exposed');
  assert.deepEqual(
    listed.connected.map((c) => c.deviceId),
    ['visible-leaf'],
  );
});
