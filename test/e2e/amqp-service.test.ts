import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import deviceSdk from 'azure-iot-device';
import amqpSdk from 'azure-iot-device-amqp';
import mqttSdk from 'azure-iot-device-mqtt';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { createSasDevice, serviceClient } from '../fixtures/service-messaging-helpers.ts';
import { startServiceClient, waitFor } from '../fixtures/amqp-helpers.ts';

/**
 * The official service SDK (azure-iothub `Client`, on `Amqp` and on `AmqpWs`) sends C2D
 * messages over AMQP to a device connected over MQTT and to one connected over AMQP, and reads
 * the positive and negative delivery feedback on /messages/serviceBound/feedback.
 */

const { Client, Message } = deviceSdk;
const { Amqp } = amqpSdk;
const { Mqtt } = mqttSdk;
type DeviceClient = InstanceType<typeof Client>;
type SdkMessage = InstanceType<typeof Message>;

let hub: HubProcess;
let svc: ServiceClient;
const devices: DeviceClient[] = [];
const services: Array<ReturnType<typeof startServiceClient>> = [];

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
});

after(async () => {
  for (const s of services) await s.stop().catch(() => undefined);
  for (const d of devices) await d.close().catch(() => undefined);
  svc?.close();
  await hub?.stop();
});

interface Received {
  messageId: string;
  body: string;
  props: Record<string, string>;
}

/** A device that records what it receives and settles as the body says: 'reject' is rejected, anything else completed. */
async function device(id: string, transport: typeof Amqp | typeof Mqtt): Promise<Received[]> {
  const { cs } = await createSasDevice(svc, hub, id);
  const client = Client.fromConnectionString(cs, transport);
  devices.push(client);
  await client.setOptions({ ca: hub.caPem });
  await client.open();
  const got: Received[] = [];
  client.on('message', (m: SdkMessage) => {
    const props: Record<string, string> = {};
    for (let i = 0; i < m.properties.count(); i++) {
      const p = m.properties.getItem(i);
      props[p.key] = String(p.value);
    }
    const body = m.getData().toString();
    got.push({ messageId: String(m.messageId), body, props });
    setImmediate(() => (body === 'reject' ? client.reject(m) : client.complete(m)).catch(() => undefined));
  });
  return got;
}

for (const transport of ['Amqp', 'AmqpWs'] as const) {
  test(`azure-iothub Client over ${transport}: C2D to an MQTT and an AMQP device, with positive and negative feedback`, async () => {
    const mqttId = `svc-${transport}-mqtt`;
    const amqpId = `svc-${transport}-amqp`;
    const [mqttGot, amqpGot] = await Promise.all([device(mqttId, Mqtt), device(amqpId, Amqp)]);

    const service = startServiceClient(hub, transport);
    services.push(service);
    await service.must({ op: 'open' });
    await service.must({ op: 'feedback' });

    await service.must({
      op: 'send',
      deviceId: mqttId,
      body: 'hello mqtt',
      messageId: `m-${transport}-1`,
      ack: 'full',
      properties: { kind: 'greeting' },
    });
    await service.must({
      op: 'send',
      deviceId: amqpId,
      body: 'hello amqp',
      messageId: `m-${transport}-2`,
      ack: 'positive',
    });
    await service.must({
      op: 'send',
      deviceId: amqpId,
      body: 'reject',
      messageId: `m-${transport}-3`,
      ack: 'negative',
    });
    // A rejection of a message that asked for positive feedback only gives none.
    await service.must({
      op: 'send',
      deviceId: amqpId,
      body: 'reject',
      messageId: `m-${transport}-4`,
      ack: 'positive',
    });

    await waitFor('the MQTT device to receive its message', () => mqttGot.length >= 1 || undefined);
    await waitFor('the AMQP device to receive its three', () => amqpGot.length >= 3 || undefined);
    assert.equal(mqttGot[0]!.messageId, `m-${transport}-1`);
    assert.equal(mqttGot[0]!.body, 'hello mqtt');
    assert.equal(mqttGot[0]!.props.kind, 'greeting');
    assert.equal(amqpGot[0]!.body, 'hello amqp');
    assert.equal(amqpGot[0]!.messageId, `m-${transport}-2`);

    const records = () => service.events.filter((e) => e.event === 'feedback').flatMap((e) => e.records ?? []);
    await waitFor('feedback for the three messages that asked for it', () => records().length >= 3 || undefined);
    const byId = new Map(records().map((r) => [r.originalMessageId, r]));
    assert.equal(byId.get(`m-${transport}-1`)?.statusCode, 'Success');
    assert.equal(byId.get(`m-${transport}-1`)?.deviceId, mqttId);
    assert.equal(byId.get(`m-${transport}-2`)?.statusCode, 'Success');
    assert.equal(byId.get(`m-${transport}-2`)?.deviceId, amqpId);
    assert.equal(byId.get(`m-${transport}-3`)?.statusCode, 'Rejected');
    assert.equal(byId.get(`m-${transport}-3`)?.deviceId, amqpId);
    assert.ok(byId.get(`m-${transport}-1`)?.enqueuedTimeUtc, 'records carry enqueuedTimeUtc');
    const fb = service.events.find((e) => e.event === 'feedback');
    assert.equal(fb?.contentType, 'application/vnd.microsoft.iothub.feedback.json');
    // Message 4 was rejected but asked for positive feedback only.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(
      records().some((r) => r.originalMessageId === `m-${transport}-4`),
      false,
    );
    // Taken records are gone: the REST reader no longer sees them.
    const left =
      (await svc.request<Array<{ originalMessageId: string }>>('GET', '/messages/serviceBound/feedback')).body ?? [];
    assert.equal(left.filter((r) => r.originalMessageId.startsWith(`m-${transport}-`)).length, 0);
    // Feedback goes to whichever service receiver is connected: this one leaves for the next test.
    await service.stop();
  });
}

test('a C2D message to an unknown device is refused with DeviceNotFoundError; the client keeps working', async () => {
  const service = startServiceClient(hub, 'Amqp');
  services.push(service);
  await service.must({ op: 'open' });
  const a = await service.call({ op: 'send', deviceId: 'no-such-device', body: 'x' });
  assert.equal(a.ok, false);
  assert.equal(a.error?.name, 'DeviceNotFoundError', JSON.stringify(a.error));
  const got = await device('svc-after-404', Amqp);
  await service.must({ op: 'send', deviceId: 'svc-after-404', body: 'still here', messageId: 'after-404' });
  await waitFor('the message after the refusal', () => got.length >= 1 || undefined);
  assert.equal(got[0]!.body, 'still here');
});

test('a policy without ServiceConnect cannot open the C2D link', async () => {
  const registryRead = await policyConnectionString('registryRead');
  const service = startServiceClient(hub, 'Amqp', registryRead);
  services.push(service);
  // The put-token succeeds (the signature is good); attaching the C2D link is what is refused.
  await service.must({ op: 'open' });
  const a = await service.call({ op: 'send', deviceId: 'svc-after-404', body: 'x' });
  assert.equal(a.ok, false);
  assert.equal(a.error?.name, 'UnauthorizedError', JSON.stringify(a.error));
});

async function policyConnectionString(policy: string): Promise<string> {
  const bin = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
  return execFileSync(process.execPath, [bin, 'hub', 'connection-string', '--data', hub.dataDir, '--policy', policy], {
    encoding: 'utf8',
  }).trim();
}
