/**
 * Property-based fuzzing of the hub's HTTPS APIs with fast-check: random methods, paths (odd,
 * encoded and overlong ids), headers (content types, iothub-* properties, etags) and bodies
 * (hostile JSON: deep, wide, prototype keys; broken JSON; raw bytes) go, authenticated, to the
 * device REST API (telemetry, cloud-to-device) and the service REST API (registry, twins,
 * queries, bulk, deployments, methods, cloud-to-device). No input gets a 5xx: every bad one is
 * a 4xx, and the hub's Object.prototype is untouched.
 */
import assert from 'node:assert/strict';
import { request as httpsRequest } from 'node:https';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { createSasToken } from '../../src/identity/sas.ts';
import { createSasDevice, deviceToken, startTestHub, type TestHub } from '../e2e/mqtt-helpers.ts';
import { checkProperty, fuzzParams, fuzzTimeoutMs, objectPrototypeAdditions } from './fuzz-budget.ts';

let hub: TestHub;
let deviceKey: string;
let serviceToken: string;
const cleanups: Array<() => unknown> = [];
const ctx = { after: (fn: () => unknown) => cleanups.push(fn) };

before(async () => {
  hub = await startTestHub(ctx);
  deviceKey = createSasDevice(hub, 'fuzzer').key;
  hub.node.registry.putModule('fuzzer', 'm', { deviceId: 'fuzzer', moduleId: 'm' });
  const policy = hub.node.registry.getPolicy('iothubowner')!;
  serviceToken = createSasToken(hub.address, policy.primaryKey, Math.floor(Date.now() / 1000) + 3600, 'iothubowner');
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

interface Call {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
  as: 'device' | 'service';
}

function send(call: Call): Promise<{ status: number; text: string }> {
  const auth = call.as === 'device' ? deviceToken(hub, 'fuzzer', deviceKey) : serviceToken;
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      // A fresh connection each time: a kept-alive one the server has just closed would fail the next request client-side.
      {
        method: call.method,
        host: hub.address,
        port: 443,
        path: call.path,
        ca: hub.caPem,
        agent: false,
        headers: { ...call.headers, Authorization: auth },
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer within 30 s')));
    req.on('error', reject);
    req.end(call.body);
  });
}

const id = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('fuzzer', 'nobody', 'fuzzer2') },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '%24edgeHub',
      '%2F',
      '..',
      '%00',
      'a%20b',
      '%E2%82%AC',
      'x'.repeat(300),
      '%',
      '%ZZ',
      'a;b',
      '__proto__',
      'constructor',
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 20 }).map(encodeURIComponent) },
);
const apiVersion = fc.constantFrom(
  '?api-version=2021-04-12',
  '?api-version=2020-09-30',
  '',
  '?api-version=',
  '?api-version=2021-04-12&top=5',
  '?api-version=2021-04-12&top=-1',
  '?api-version=2021-04-12&ttlSeconds=x&ack=full',
);

/** Deep nesting where each API reads: twin sections, method payloads, registry fields, message bodies, queries. */
const deepJson = fc
  .tuple(
    fc.integer({ min: 1, max: 20_000 }),
    fc.constantFrom('[', '{"a":'),
    fc.constantFrom(
      (d: string) => `{"a":${d}}`,
      (d: string) => `{"properties":{"desired":{"a":${d}}}}`,
      (d: string) => `{"tags":{"a":${d}}}`,
      (d: string) => `{"methodName":"m","payload":${d},"responseTimeoutInSeconds":5}`,
      (d: string) => `{"deviceId":"fuzzer","capabilities":${d}}`,
      (d: string) => `{"modulesContent":{"m":{"properties.desired":{"a":${d}}}}}`,
      (d: string) => `{"body":${d}}`,
      (d: string) => `[${d}]`,
    ),
  )
  .map(([n, open, place]) => place(`${open.repeat(n)}1${(open === '[' ? ']' : '}').repeat(n)}`));
const hostileJson = fc.oneof(
  fc.json({ depthSize: 'small' }),
  deepJson,
  fc
    .integer({ min: 1, max: 3_000 })
    .map((n) => `[${Array.from({ length: n }, (_, i) => `{"deviceId":"bulk-${i}","importMode":"create"}`).join(',')}]`),
  fc.constantFrom(
    '{"__proto__":{"polluted":1}}',
    '{"a":{"__proto__":{"polluted":1}}}',
    '{"constructor":{"prototype":{"polluted":1}}}',
    '{"properties":{"desired":{"a":{"__proto__":{"x":1}}}}}',
    '{"tags":{"__proto__":{"x":1}}}',
    '{"deviceId":"fuzzer","etag":"*","capabilities":{"iotEdge":"yes"}}',
    '{"methodName":"m","payload":{"a":1},"responseTimeoutInSeconds":5}',
    '{"methodName":"","responseTimeoutInSeconds":-1}',
    '{"query":"SELECT * FROM devices WHERE ((("}',
    '{"query":"SELECT * FROM devices"}',
    '{"modulesContent":{"$edgeHub":{"properties.desired":{"schemaVersion":"1.1","routes":{"r":"FROM /x INTO $upstream"},"storeAndForwardConfiguration":{"timeToLiveSecs":-1}}}}}',
    '{"body":"aGk=","properties":{"iothub-app-a":"b"}}',
    '[{"body":"!!","properties":{}}]',
    '{',
    '',
    'null',
    '[]',
    '"x"',
    '1e999',
    '{"a":1,"a":2}',
  ),
);
const body = fc.oneof(
  { weight: 4, arbitrary: hostileJson.map((s) => Buffer.from(s)) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)) },
  { weight: 1, arbitrary: fc.constant(undefined) },
);

const headerValue = fc.oneof(
  fc.constantFrom(
    'application/json',
    'application/json; charset=utf-8',
    'application/vnd.microsoft.iothub.json',
    'text/plain',
    'application/octet-stream',
    '*',
    '"*"',
    'W/"1"',
    'AAAAAAAAAAE=',
    '',
    'utf-8',
    'base64',
    'full',
  ),
  fc.stringMatching(/^[\x20-\x7e]{0,40}$/),
);
const headerName = fc.oneof(
  fc.constantFrom(
    'content-type',
    'if-match',
    'iothub-to',
    'iothub-messageid',
    'iothub-correlationid',
    'iothub-contenttype',
    'iothub-contentencoding',
    'iothub-app-temperature',
    'iothub-app-',
    'iothub-expiry',
    'iothub-ack',
    'iothub-userid',
    'x-ms-continuation',
    'x-ms-max-item-count',
    'accept',
  ),
  fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/),
);
const headers = fc.dictionary(headerName, headerValue, { maxKeys: 5 });

const servicePath = fc.tuple(
  fc.constantFrom(
    ['GET', '/devices/{id}'],
    ['PUT', '/devices/{id}'],
    ['DELETE', '/devices/{id}'],
    ['POST', '/devices'],
    ['GET', '/devices'],
    ['GET', '/devices/{id}/modules'],
    ['PUT', '/devices/{id}/modules/{mid}'],
    ['GET', '/devices/{id}/modules/{mid}'],
    ['GET', '/twins/{id}'],
    ['PATCH', '/twins/{id}'],
    ['PUT', '/twins/{id}'],
    ['PATCH', '/twins/{id}/modules/{mid}'],
    ['PUT', '/twins/{id}/modules/{mid}'],
    ['POST', '/devices/query'],
    ['POST', '/devices/{id}/applyConfigurationContent'],
    ['GET', '/statistics/devices'],
    ['POST', '/twins/{id}/methods'],
    ['POST', '/twins/{id}/modules/{mid}/methods'],
    ['POST', '/devices/{id}/messages/deviceBound'],
    ['DELETE', '/messages/serviceBound/feedback/{id}'],
    ['PATCH', '/devices/{id}'],
    ['GET', '/nowhere/{id}'],
  ),
  fc.constantFrom('GET', 'PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD'),
  fc.boolean(),
);
const devicePath = fc.constantFrom(
  ['POST', '/devices/{id}/messages/events'],
  ['POST', '/devices/{id}/modules/{mid}/messages/events'],
  ['GET', '/devices/{id}/messages/devicebound'],
  ['DELETE', '/devices/{id}/messages/devicebound/{mid}'],
  ['POST', '/devices/{id}/messages/devicebound/{mid}/abandon'],
  ['PUT', '/devices/{id}/messages/events'],
);

/** Deep nesting sent where each route reads it, so that it reaches the code behind the route. */
const deepAtRoute = fc
  .tuple(
    fc.constantFrom(
      ['PATCH', '/twins/fuzzer', (d: string) => `{"properties":{"desired":{"a":${d}}}}`],
      ['PUT', '/twins/fuzzer/modules/m', (d: string) => `{"tags":{"a":${d}}}`],
      ['PUT', '/devices/deep', (d: string) => `{"deviceId":"deep","capabilities":${d},"authentication":${d}}`],
      ['POST', '/devices', (d: string) => `[{"deviceId":"deep2","importMode":"create","tags":${d}}]`],
      [
        'POST',
        '/twins/fuzzer/methods',
        (d: string) => `{"methodName":"m","payload":${d},"responseTimeoutInSeconds":5}`,
      ],
      [
        'POST',
        '/devices/query',
        (d: string) =>
          JSON.stringify({
            query: `SELECT * FROM devices WHERE tags.a IN ${d.replace(/\{"a":/g, '[').replace(/\}/g, ']')}`,
          }),
      ],
      [
        'POST',
        '/devices/fuzzer/applyConfigurationContent',
        (d: string) => `{"modulesContent":{"$edgeAgent":{"properties.desired":{"a":${d}}}}}`,
      ],
      ['POST', '/devices/fuzzer/messages/deviceBound', (d: string) => `{"body":${d},"properties":${d}}`],
    ),
    fc.integer({ min: 1, max: 20_000 }),
    fc.constantFrom('[', '{"a":'),
  )
  .map(
    ([[method, path, place], n, open]): Call => ({
      method: method as string,
      path: `${path as string}?api-version=2021-04-12`,
      headers: { 'content-type': 'application/json' },
      body: Buffer.from((place as (d: string) => string)(`${open.repeat(n)}1${(open === '[' ? ']' : '}').repeat(n)}`)),
      as: 'service',
    }),
  );

const call: fc.Arbitrary<Call> = fc.oneof(
  deepAtRoute,
  fc
    .record({ route: servicePath, id, mid: fc.oneof(fc.constant('m'), id), query: apiVersion, headers, body })
    .map(({ route: [[method, template], otherMethod, keepMethod], id: i, mid, query, headers: h, body: b }) => {
      const m = keepMethod ? method : otherMethod;
      return {
        method: m,
        path: template.replace('{id}', i).replace('{mid}', mid) + query,
        headers: h,
        // A HEAD with a body is not HTTP the client library can send.
        ...(b !== undefined && m !== 'HEAD' ? { body: b } : {}),
        as: 'service' as const,
      };
    }),
  fc
    .record({ route: devicePath, mid: fc.oneof(fc.constant('m'), id), query: apiVersion, headers, body })
    .map(({ route: [method, template], mid, query, headers: h, body: b }) => ({
      method,
      // The device's own id: its token is for it, and another id is a 401 before anything is parsed.
      path: template.replace('{id}', 'fuzzer').replace('{mid}', mid) + query,
      headers: h,
      ...(b !== undefined ? { body: b } : {}),
      as: 'device' as const,
    })),
);

test('random requests to the device and service REST APIs: never a 5xx, every bad input a 4xx', {
  timeout: fuzzTimeoutMs(120_000),
}, async () => {
  await checkProperty(
    fc.asyncProperty(call, async (c) => {
      const r = await send(c);
      assert.ok(
        r.status >= 200 && r.status < 500,
        `${c.method} ${c.path.slice(0, 120)} as ${c.as} -> ${r.status}: ${r.text.slice(0, 300)}`,
      );
      assert.deepEqual(objectPrototypeAdditions(), [], 'Object.prototype of the hub process changed');
    }),
    fuzzParams(150),
  );
  // Still serving (the fuzzer may have deleted its own device by now).
  const ok = await send({
    method: 'GET',
    path: '/statistics/devices?api-version=2021-04-12',
    headers: {},
    as: 'service',
  });
  assert.equal(ok.status, 200, ok.text);
});
