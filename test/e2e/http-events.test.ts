import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { hubConnectionString } from '../../src/hub/local.ts';
import { ServiceClient } from '../../src/hub/service-client.ts';
import type { EventJson, EventPageJson } from '../../src/hub/service-messaging.ts';
import {
  createSasDevice,
  deviceToken,
  rawRequest,
  serviceClient,
  serviceToken,
  until,
} from '../fixtures/service-messaging-helpers.ts';

/**
 * The service endpoint that reads the event stream: from a sequence number or a time, with a
 * device / module filter, as one long-polled JSON page or as server-sent events.
 */

let hub: HubProcess;
let svc: ServiceClient;
let key: string;
let moduleKey: string;
let key2: string;

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
  ({ key, moduleKey } = (await createSasDevice(svc, hub, 'ev-1', { moduleId: 'm' })) as {
    key: string;
    moduleKey: string;
  });
  ({ key: key2 } = await createSasDevice(svc, hub, 'ev-2'));
});

after(async () => {
  svc?.close();
  await hub?.stop();
});

async function send(deviceId: 'ev-1' | 'ev-2', body: string, moduleId?: string): Promise<void> {
  const token = moduleId
    ? deviceToken(hub, moduleKey, deviceId, moduleId)
    : deviceToken(hub, deviceId === 'ev-1' ? key : key2, deviceId);
  const res = await rawRequest(hub, {
    method: 'POST',
    path: `/devices/${deviceId}${moduleId ? `/modules/${moduleId}` : ''}/messages/events?api-version=2021-04-12`,
    headers: { authorization: token },
    body,
  });
  assert.equal(res.status, 204, res.text);
}

const page = async (q: Record<string, string>) =>
  (await svc.request<EventPageJson>('GET', `/events?${new URLSearchParams(q)}`)).body;
const bodies = (events: EventJson[]) => events.map((e) => Buffer.from(e.body, 'base64').toString());

test('read from a sequence number, from a time, by device and by module', async () => {
  const start = (await page({ from: 'end' })).nextSequenceNumber;
  await send('ev-1', 'a');
  await send('ev-2', 'b');
  await send('ev-1', 'c', 'm');
  const all = (await page({ from: String(start), wait: '5', limit: '10' })).events;
  assert.deepEqual(bodies(all), ['a', 'b', 'c']);
  assert.deepEqual(
    all.map((e) => e.sequenceNumber),
    [start, start + 1, start + 2],
  );

  assert.deepEqual(bodies((await page({ from: String(start + 1) })).events), ['b', 'c']);
  assert.deepEqual(bodies((await page({ from: String(start), device: 'ev-1' })).events), ['a', 'c']);
  assert.deepEqual(bodies((await page({ from: String(start), device: 'ev-1', module: 'm' })).events), ['c']);
  const limited = await page({ from: String(start), limit: '2' });
  assert.deepEqual(bodies(limited.events), ['a', 'b']);
  assert.deepEqual(bodies((await page({ from: String(limited.nextSequenceNumber) })).events), ['c']);

  const since = new Date(all[1]!.enqueuedTime).toISOString();
  const fromTime = (await page({ since, device: 'ev-2' })).events;
  assert.ok(fromTime.length >= 1 && bodies(fromTime).includes('b'));
  assert.ok(fromTime.every((e) => Date.parse(e.enqueuedTime) >= Date.parse(since)));
  const future = await page({ since: new Date(Date.now() + 3_600_000).toISOString() });
  assert.deepEqual(future.events, []);
});

test('a long-poll waits for the next event and returns as soon as it is stored', async () => {
  const from = String((await page({ from: 'end' })).nextSequenceNumber);
  const started = Date.now();
  const pending = page({ from, wait: '10', device: 'ev-2' });
  await new Promise((r) => setTimeout(r, 500));
  await send('ev-2', 'worth the wait');
  const got = await pending;
  const took = Date.now() - started;
  assert.deepEqual(bodies(got.events), ['worth the wait']);
  assert.ok(took >= 400 && took < 5000, `the long-poll returned after ${took} ms`);
  // Nothing new: an empty page after the wait, pointing at the same place.
  const empty = await page({ from: String(got.nextSequenceNumber), wait: '0.3' });
  assert.deepEqual(empty.events, []);
  assert.equal(empty.nextSequenceNumber, got.nextSequenceNumber);
});

interface Sse {
  res: IncomingMessage;
  events: Array<{ id?: string; event?: string; data: string }>;
  close(): void;
}

function openSse(path: string, headers: Record<string, string> = {}): Promise<Sse> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: hub.address,
        port: hub.httpsPort,
        path,
        ca: hub.caPem,
        agent: false,
        headers: { accept: 'text/event-stream', authorization: serviceToken(svc), ...headers },
      },
      (res) => {
        const events: Sse['events'] = [];
        let buffer = '';
        res.on('data', (c: Buffer) => {
          buffer += c.toString();
          let idx: number;
          while ((idx = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, idx);
            buffer = buffer.slice(idx + 2);
            const ev: { id?: string; event?: string; data: string } = { data: '' };
            let any = false;
            for (const line of block.split('\n')) {
              if (line.startsWith(':')) continue;
              const [field, ...rest] = line.split(':');
              const value = rest.join(':').replace(/^ /, '');
              any = true;
              if (field === 'data') ev.data += value;
              else if (field === 'id') ev.id = value;
              else if (field === 'event') ev.event = value;
            }
            if (any) events.push(ev);
          }
        });
        resolve({ res, events, close: () => req.destroy() });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

test('server-sent events stream each stored event, and Last-Event-ID resumes after the last one seen', async () => {
  const from = (await page({ from: 'end' })).nextSequenceNumber;
  const sse = await openSse(`/events?from=${from}&device=ev-1`);
  try {
    assert.equal(sse.res.statusCode, 200);
    assert.match(String(sse.res.headers['content-type']), /^text\/event-stream/);
    await send('ev-1', 'one');
    await send('ev-2', 'filtered out');
    await send('ev-1', 'two');
    await until('two streamed events', () => sse.events.length >= 2);
    const got = sse.events.map((e) => JSON.parse(e.data) as EventJson);
    assert.deepEqual(bodies(got), ['one', 'two']);
    assert.deepEqual(
      sse.events.map((e) => e.id),
      got.map((e) => String(e.sequenceNumber)),
    );
    assert.ok(sse.events.every((e) => e.event === 'message'));
    assert.equal(got[0]!.annotations['iothub-connection-device-id'], 'ev-1');
  } finally {
    sse.close();
  }
  const firstId = (await page({ from: String(from), device: 'ev-1' })).events[0]!.sequenceNumber;
  const resumed = await openSse(`/events?from=${from}&device=ev-1`, { 'last-event-id': String(firstId) });
  try {
    await until('the resumed stream', () => resumed.events.length >= 1);
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(bodies(resumed.events.map((e) => JSON.parse(e.data) as EventJson)), ['two']);
  } finally {
    resumed.close();
  }
});

test('the event reader refuses bad queries and callers without ServiceConnect', async () => {
  const get = (path: string, authorization?: string) =>
    rawRequest(hub, { method: 'GET', path, headers: authorization ? { authorization } : {} });
  const owner = serviceToken(svc);
  const refusal = (r: { status: number; text: string }, status: number, code: string, text: RegExp) => {
    assert.equal(r.status, status, r.text);
    const m = (JSON.parse(r.text) as { Message: string }).Message;
    assert.ok(m.startsWith(`ErrorCode:${code};`), m);
    assert.match(m, text);
  };
  refusal(await get('/events?from=abc', owner), 400, 'ArgumentInvalid', /from/);
  refusal(await get('/events?from=1&since=2024-01-01T00:00:00Z', owner), 400, 'ArgumentInvalid', /either/);
  refusal(await get('/events?since=someday', owner), 400, 'ArgumentInvalid', /since/);
  refusal(await get('/events?limit=0', owner), 400, 'ArgumentInvalid', /limit/);
  refusal(await get('/events?wait=600', owner), 400, 'ArgumentInvalid', /wait/);
  refusal(await get('/events?module=m', owner), 400, 'ArgumentInvalid', /device/);
  refusal(await get('/events'), 401, 'IotHubUnauthorizedAccess', /Authorization/);
  refusal(await get('/events', deviceToken(hub, key, 'ev-1')), 401, 'IotHubUnauthorizedAccess', /policy/);
  const reader = new ServiceClient(hubConnectionString(hub.dataDir, 'registryRead'), { ca: hub.caPem });
  try {
    refusal(await get('/events', serviceToken(reader)), 401, 'IotHubUnauthorizedAccess', /ServiceConnect/);
  } finally {
    reader.close();
  }
});

test('the hub stops promptly while an event stream is open', async () => {
  const other = await startHubProcess();
  const otherSvc = new ServiceClient(other.connectionString, { ca: other.caPem });
  try {
    const sse = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = https.request(
        {
          host: other.address,
          port: other.httpsPort,
          path: '/events?from=end',
          ca: other.caPem,
          agent: false,
          headers: { accept: 'text/event-stream', authorization: serviceToken(otherSvc) },
        },
        resolve,
      );
      req.on('error', reject);
      req.end();
    });
    sse.resume();
    const ended = new Promise<void>((resolve) => sse.once('close', () => resolve()));
    const started = Date.now();
    await other.stop();
    await ended;
    assert.ok(Date.now() - started < 8000, `stopping took ${Date.now() - started} ms`);
    assert.equal(other.proc.exitCode, 0, other.output());
    assert.doesNotMatch(other.output(), /"level":50/, 'no errors logged while stopping');
  } finally {
    otherSvc.close();
    await other.stop();
  }
});
