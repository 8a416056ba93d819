/**
 * A gateway, and the hub, stop promptly on SIGTERM while official SDK leaves are still
 * connected, over every device transport: listeners that wait for their connections to end are
 * closed only after the heads have ended those connections (both roles open the same ones).
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import { setupEdge, startGatewayProcess, type EdgeSetup } from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { openSdkLeaf } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { NoRetry } = require('azure-iot-common');

let hub: HubProcess;
let edge: EdgeSetup;

before(async () => {
  hub = await startHubProcess();
  edge = await setupEdge(hub, { gatewayId: 'gw-shutdown', address: randomLoopback() });
});
after(async () => {
  await edge?.cleanup();
  await hub?.stop();
});

const transports = { Mqtt, MqttWs, Amqp, AmqpWs } as const;

for (const [name, Transport] of Object.entries(transports)) {
  test(`SIGTERM ends a gateway within 5 s while a ${name} leaf is connected`, async (t) => {
    const address = edge.address;
    const gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address });
    t.after(() => gw.kill9());
    const leaf = await edge.createLeaf(`leaf-shutdown-${name.toLowerCase()}`);
    // No reconnecting once the gateway is gone: closing the client then takes no time.
    await openSdkLeaf(t, leaf.connectionString, Transport, edge.rootPem, (c) => c.setRetryPolicy(new NoRetry()));
    const started = Date.now();
    const exited = new Promise<number | null>((resolve) => gw.proc.once('exit', (code) => resolve(code)));
    gw.proc.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 5000))]);
    assert.notEqual(code, 'hung', `the gateway was still running 5 s after SIGTERM:\n${gw.output().slice(-2000)}`);
    assert.equal(code, 0);
    assert.ok(Date.now() - started < 5000);
  });
}

test('SIGTERM ends the hub within 5 s while Mqtt, MqttWs, Amqp and AmqpWs leaves are connected to it', async (t) => {
  for (const [name, Transport] of Object.entries(transports)) {
    const leaf = await edge.createLeaf(`hub-leaf-${name.toLowerCase()}`);
    const direct = leaf.connectionString.replace(/;GatewayHostName=[^;]*/, '');
    await openSdkLeaf(t, direct, Transport, hub.caPem, (c) => c.setRetryPolicy(new NoRetry()));
  }
  const exited = new Promise<number | null>((resolve) => hub.proc.once('exit', (code) => resolve(code)));
  hub.proc.kill('SIGTERM');
  const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 5000))]);
  assert.notEqual(code, 'hung', `the hub was still running 5 s after SIGTERM:\n${hub.output().slice(-2000)}`);
  assert.equal(code, 0);
});
