import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { answerAgentMethod, type AgentMethodTarget } from '../../src/agent/agent-methods.ts';

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
