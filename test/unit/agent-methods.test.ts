import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { answerAgentMethod, type AgentMethodTarget } from '../../src/agent/agent-methods.ts';
import { logBlobName, UploadTasks, uploadTarget } from '../../src/agent/log-upload.ts';

/** A target with two modules whose logs are fixed lines; restarts are recorded. */
function target(): AgentMethodTarget & { restarted: string[] } {
  const lines: Record<string, string[]> = { sensor: ['s1', 's2', 's3'], filter: ['f1'] };
  const restarted: string[] = [];
  return {
    restarted,
    moduleNames: () => Object.keys(lines),
    restartModule: async (name) => void restarted.push(name),
    logs: async (name, opts) => {
      const all = lines[name]!;
      const some = opts.tail === undefined ? all : all.slice(-opts.tail);
      return (async function* () {
        yield* some;
      })();
    },
  };
}

const call = (t: AgentMethodTarget, methodName: string, payload?: unknown) =>
  answerAgentMethod(t, {
    requestId: '1',
    methodName,
    payload: payload === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(payload)),
  });

test('ping answers 200 with a null payload, whatever the case of its name', async () => {
  assert.deepEqual(await call(target(), 'ping', {}), { status: 200, payload: null });
  assert.deepEqual(await call(target(), 'Ping'), { status: 200, payload: null });
});

test('RestartModule restarts the named module; an unknown one is 404, a missing id 400', async () => {
  const t = target();
  assert.deepEqual(await call(t, 'RestartModule', { schemaVersion: '1.0', id: 'filter' }), {
    status: 200,
    payload: null,
  });
  assert.deepEqual(t.restarted, ['filter']);
  assert.equal((await call(t, 'RestartModule', { schemaVersion: '1.0', id: 'nosuch' })).status, 404);
  assert.equal((await call(t, 'restartmodule', { schemaVersion: '1.0' })).status, 400);
});

test('GetModuleLogs: ids are patterns, tail applies, text or json, plain or gzip', async () => {
  const t = target();
  const text = await call(t, 'GetModuleLogs', {
    schemaVersion: '1.0',
    items: [{ id: 'sensor', filter: { tail: 2 } }],
    encoding: 'none',
    contentType: 'text',
  });
  assert.deepEqual(text, { status: 200, payload: [{ id: 'sensor', payload: 's2\ns3\n' }] });

  const all = await call(t, 'GetModuleLogs', { schemaVersion: '1.0', items: [{ id: '.*' }], contentType: 'json' });
  assert.deepEqual(
    (all.payload as Array<{ id: string }>).map((x) => x.id),
    ['sensor', 'filter'],
  );
  assert.deepEqual((all.payload as Array<{ payload: unknown }>)[1]!.payload, [{ moduleId: 'filter', text: 'f1' }]);

  const gz = await call(t, 'GetModuleLogs', { schemaVersion: '1.0', items: [{ id: 'filter' }], encoding: 'gzip' });
  const [item] = gz.payload as Array<{ id: string; payloadBytes: string }>;
  assert.equal(gunzipSync(Buffer.from(item!.payloadBytes, 'base64')).toString(), 'f1\n');
});

test('GetModuleLogs refuses bad input naming the field', async () => {
  const t = target();
  assert.match(JSON.stringify(await call(t, 'GetModuleLogs', { items: [] })), /items/);
  assert.match(JSON.stringify(await call(t, 'GetModuleLogs', { items: [{ id: '(' }] })), /items\[0\]\.id/);
  assert.match(
    JSON.stringify(await call(t, 'GetModuleLogs', { items: [{ id: 'sensor', filter: { tail: -1 } }] })),
    /items\[0\]\.filter\.tail/,
  );
  assert.match(JSON.stringify(await call(t, 'GetModuleLogs', { items: [{ id: 'x' }], encoding: 'zip' })), /encoding/);
  const notJson = await answerAgentMethod(t, {
    requestId: '1',
    methodName: 'GetModuleLogs',
    payload: Buffer.from('{'),
  });
  assert.equal(notJson.status, 400);
  assert.equal((await call(t, 'UploadModuleLogs', {})).status, 501);
});

test('UploadModuleLogs answers a correlation id and uploads each module; GetTaskStatus follows it', async () => {
  const sent: Array<{ sasUrl: string; blob: string; body: string; type: string }> = [];
  const t: AgentMethodTarget = {
    ...target(),
    logUpload: {
      tasks: new UploadTasks(),
      upload: async (sasUrl, blob, body, type) => void sent.push({ sasUrl, blob, body: body.toString(), type }),
      hub: 'hub.example',
      device: 'gw',
    },
  };
  const sasUrl = 'https://$upstream/storage/logs';
  const r = await call(t, 'UploadModuleLogs', { schemaVersion: '1.0', sasUrl, items: [{ id: '.*' }] });
  assert.equal(r.status, 200);
  const { status, correlationId } = r.payload as { status: string; correlationId: string };
  assert.equal(status, 'NotStarted');
  await new Promise((resolve) => setImmediate(resolve));
  const s = await call(t, 'GetTaskStatus', { schemaVersion: '1.0', correlationId });
  assert.deepEqual(s.payload, { status: 'Completed', message: '', correlationId });
  assert.deepEqual(
    sent.map((x) => [x.sasUrl, x.blob.replace(/-[\d-]+\.log$/, ''), x.body, x.type]),
    [
      [sasUrl, 'hub.example/gw/sensor', 's1\ns2\ns3\n', 'text/plain'],
      [sasUrl, 'hub.example/gw/filter', 'f1\n', 'text/plain'],
    ],
  );
  assert.equal(
    ((await call(t, 'GetTaskStatus', { correlationId: 'nope' })).payload as { status: string }).status,
    'Unknown',
  );
  assert.equal((await call(t, 'UploadModuleLogs', { items: [{ id: 'x' }] })).status, 400);
});

test('a log upload through $upstream goes to the parent /storage/; others as given', () => {
  const up = uploadTarget('https://$upstream/storage/logs/', 'hub/gw/m-1.log', 'gw-l2.example');
  assert.equal(up.viaParent, true);
  assert.equal(up.url.href, 'https://gw-l2.example:443/storage/logs/hub/gw/m-1.log'.replace(':443', ''));
  const sas = uploadTarget('https://acct.blob.core.windows.net/logs?sv=1&sig=x', 'h/d/m.log', 'gw-l2.example');
  assert.equal(sas.viaParent, false);
  assert.equal(sas.url.href, 'https://acct.blob.core.windows.net/logs/h/d/m.log?sv=1&sig=x');
  assert.throws(() => uploadTarget('https://$upstream/storage/logs', 'x', undefined), /no parent/);
  assert.throws(() => uploadTarget('https://$upstream/logs', 'x', 'p.example'), /\/storage\/CONTAINER/);
  assert.throws(() => uploadTarget('http://acct/logs', 'x', 'p'), /https/);
  assert.equal(
    logBlobName({ hub: 'h', device: 'd', module: 'm', json: true, gzip: true }, new Date('2026-12-07T15:04:05Z')),
    'h/d/m-2026-12-07--15-04-05.json.gz',
  );
});
