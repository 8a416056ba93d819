import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { ServiceClient, type DeviceJson } from '../../src/hub/service-client.ts';

/**
 * The `strata device` CLI, run as a user runs it (a child process per command), against a real
 * hub over TLS. Devices that are only scenery are made, and results are checked, through the
 * service REST API directly, so that the slow part (starting the CLI) goes to what is tested.
 */

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

let hub: HubProcess;
let svc: ServiceClient;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
      env: {
        ...process.env,
        STRATA_HUB_CONNECTION_STRING: undefined,
        STRATA_CA: undefined,
        STRATA_LOG_LEVEL: 'warn',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** `strata device ...` against the test hub through its connection string and CA. */
function device(...args: string[]): Promise<Run> {
  return run(['device', ...args, '--hub-connection-string', hub.connectionString, '--ca', hub.caPath]);
}

async function ok(...args: string[]): Promise<string> {
  const r = await device(...args);
  assert.equal(r.code, 0, `strata device ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

async function okJson<T = any>(...args: string[]): Promise<T> {
  return JSON.parse(await ok(...args, '--json')) as T;
}

function oneLine(r: Run, pattern: RegExp, what: string): string {
  assert.notEqual(r.code, 0, `${what} should have failed; stdout: ${r.stdout}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `${what}: expected one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern, what);
  assert.doesNotMatch(lines[0]!, /\.ts:\d+/, 'no stack trace');
  return lines[0]!;
}

/** A refusal: non-zero exit and exactly one line on stderr that matches. */
async function refused(pattern: RegExp, ...args: string[]): Promise<string> {
  return oneLine(await device(...args), pattern, `strata device ${args.join(' ')}`);
}

const show = (id: string) => svc.getDevice(id);
const scopeOf = async (id: string) => (await show(id)).deviceScope!;

/** Scenery: a device made straight through the REST API, under `parent` if given. */
async function make(id: string, o: { edge?: boolean; parent?: string } = {}): Promise<DeviceJson> {
  const body: DeviceJson = { deviceId: id, capabilities: { iotEdge: !!o.edge } };
  if (o.parent) {
    const scope = await scopeOf(o.parent);
    body.parentScopes = [scope];
    if (!o.edge) body.deviceScope = scope;
  }
  return svc.createDevice(body);
}

before(async () => {
  hub = await startHubProcess();
  svc = new ServiceClient(hub.connectionString, { ca: hub.caPem });
});

after(async () => {
  svc?.close();
  await hub?.stop();
});

test('create an edge parent, an edge child and a leaf under it; scopes follow the rules', async () => {
  await ok('create', 'edge-1', '--edge');
  await ok('create', 'edge-2', '--edge', '--parent', 'edge-1');
  const created = await okJson('create', 'leaf-1', '--parent', 'edge-2');
  const [e1, e2, l1] = await Promise.all(['edge-1', 'edge-2', 'leaf-1'].map(show));
  assert.equal(created.deviceId, 'leaf-1');
  assert.match(e1!.deviceScope!, /^ms-azure-iot-edge:\/\/edge-1-/);
  assert.deepEqual(e1!.parentScopes ?? [], []);
  assert.match(e2!.deviceScope!, /^ms-azure-iot-edge:\/\/edge-2-/, 'an edge child keeps its own scope');
  assert.deepEqual(e2!.parentScopes, [e1!.deviceScope]);
  assert.equal(l1!.deviceScope, e2!.deviceScope, "a leaf takes its parent's scope");
  assert.deepEqual(l1!.parentScopes, [e2!.deviceScope]);
  assert.equal(l1!.capabilities?.iotEdge, false);
  assert.equal(l1!.authentication?.type, 'sas');
  assert.ok(l1!.authentication?.symmetricKey?.primaryKey, 'the hub generated keys');
});

test('show, list and list --edge print tables; --json prints parseable JSON', async () => {
  const [shown, table, edgeOnly] = await Promise.all([
    ok('show', 'leaf-1'),
    ok('list'),
    okJson<DeviceJson[]>('list', '--edge'),
  ]);
  assert.match(shown, /^deviceId\s+leaf-1$/m);
  assert.match(shown, /^parent\s+edge-2$/m);
  assert.match(shown, /^edge\s+no$/m);

  assert.match(table.split('\n')[0]!, /^DEVICE\s+EDGE\s+STATUS\s+AUTH\s+PARENT\s+CONNECTION$/);
  assert.match(table, /^leaf-1\s+no\s+enabled\s+sas\s+edge-2\b/m);
  assert.match(table, /^edge-2\s+yes\s+enabled\s+sas\s+edge-1\b/m);
  assert.match(table, /^edge-1\s+yes\s+enabled\s+sas\s+-\s/m);

  assert.deepEqual(edgeOnly.map((d) => d.deviceId).sort(), ['edge-1', 'edge-2']);
});

test('get-parent and list-children', async () => {
  const [p1, p2, p3, c1, c2, c2human] = await Promise.all([
    ok('get-parent', 'leaf-1'),
    okJson('get-parent', 'edge-2'),
    okJson('get-parent', 'edge-1'),
    okJson('list-children', 'edge-1'),
    okJson('list-children', 'edge-2'),
    ok('list-children', 'edge-2'),
  ]);
  assert.equal(p1.trim(), 'edge-2');
  assert.deepEqual(p2, { deviceId: 'edge-2', parentId: 'edge-1' });
  assert.deepEqual(p3, { deviceId: 'edge-1', parentId: null });
  assert.deepEqual(c1, ['edge-2']);
  assert.deepEqual(c2, ['leaf-1']);
  assert.match(c2human, /^leaf-1\s+no\s+enabled$/m);
});

test('a leaf cannot be a parent', async () => {
  await make('leaf-2');
  await Promise.all([
    refused(/only IoT Edge devices can be parents/, 'set-parent', 'leaf-2', '--parent', 'leaf-1'),
    refused(/only IoT Edge devices can be parents/, 'add-children', 'leaf-1', '--children', 'leaf-2'),
    refused(/only IoT Edge devices can be parents/, 'create', 'leaf-x', '--parent', 'leaf-1'),
  ]);
  assert.deepEqual((await show('leaf-2')).parentScopes ?? [], []);
  await assert.rejects(show('leaf-x'), /DeviceNotFound/, 'a refused create creates nothing');
});

test('a second parent is refused without --force and taken with it', async () => {
  await make('edge-3', { edge: true });
  await Promise.all([
    refused(
      /^strata: device leaf-1 already has parent edge-2; use --force to move it$/,
      'set-parent',
      'leaf-1',
      '--parent',
      'edge-3',
    ),
    refused(/already has parent edge-2; use --force/, 'add-children', 'edge-3', '--children', 'leaf-2,leaf-1'),
  ]);
  assert.deepEqual((await show('leaf-2')).parentScopes ?? [], [], 'a refused add-children changes nothing');

  assert.match(await ok('set-parent', 'leaf-1', '--parent', 'edge-3', '--force'), /leaf-1 now has parent edge-3/);
  const [l1, e3] = await Promise.all([show('leaf-1'), scopeOf('edge-3')]);
  assert.equal(l1.deviceScope, e3);
  assert.deepEqual(l1.parentScopes, [e3]);

  const [again, childrenOfOld] = await Promise.all([
    ok('set-parent', 'leaf-1', '--parent', 'edge-3'),
    svc.query(`SELECT deviceId FROM devices WHERE ARRAY_CONTAINS(parentScopes, '${await scopeOf('edge-2')}')`),
  ]);
  assert.match(again, /already has parent edge-3/, 'setting the parent a device already has is not a move');
  assert.deepEqual(childrenOfOld, []);

  // An edge child moves too, keeping its own scope.
  const e2Scope = await scopeOf('edge-2');
  await refused(/device edge-2 already has parent edge-1; use --force/, 'set-parent', 'edge-2', '--parent', 'edge-3');
  await ok('set-parent', 'edge-2', '--parent', 'edge-3', '--force');
  const e2 = await show('edge-2');
  assert.equal(e2.deviceScope, e2Scope);
  assert.deepEqual(e2.parentScopes, [e3]);
  await svc.updateDevice({ ...e2, parentScopes: [await scopeOf('edge-1')] });
});

test('a cycle is refused', async () => {
  // edge-1 > edge-2 now: making edge-2 the parent of edge-1 would close a loop.
  await Promise.all([
    refused(
      /cannot make edge-2 the parent of edge-1: .*cycle/,
      'set-parent',
      'edge-1',
      '--parent',
      'edge-2',
      '--force',
    ),
    refused(/cycle/, 'add-children', 'edge-2', '--children', 'edge-1', '--force'),
    refused(/cannot be its own parent/, 'set-parent', 'edge-1', '--parent', 'edge-1'),
  ]);
  assert.deepEqual((await show('edge-1')).parentScopes ?? [], []);
});

test('a sixth layer of edge devices is refused, a leaf under the fifth is fine', async () => {
  // edge-1 > edge-2 are layers 1 and 2.
  await make('layer-3', { edge: true, parent: 'edge-2' });
  await make('layer-4', { edge: true, parent: 'layer-3' });
  await ok('create', 'layer-5', '--edge', '--parent', 'layer-4');
  await make('layer-6', { edge: true });
  await make('sub-top', { edge: true });
  await make('sub-child', { edge: true, parent: 'sub-top' });
  await Promise.all([
    refused(/6 layers of IoT Edge devices, at most 5/, 'create', 'layer-6b', '--edge', '--parent', 'layer-5'),
    refused(
      /cannot make layer-5 the parent of layer-6: that would make 6 layers of IoT Edge devices, at most 5/,
      'set-parent',
      'layer-6',
      '--parent',
      'layer-5',
    ),
    refused(/6 layers/, 'add-children', 'layer-5', '--children', 'layer-6'),
    // A subtree counts with its depth: sub-top on layer 5 would put sub-child on layer 6.
    refused(/6 layers/, 'set-parent', 'sub-top', '--parent', 'layer-4'),
  ]);
  assert.deepEqual((await show('layer-6')).parentScopes ?? [], []);
  await ok('create', 'leaf-deep', '--parent', 'layer-5');
  assert.equal((await show('leaf-deep')).deviceScope, await scopeOf('layer-5'));
});

test('add-children and remove-children', async () => {
  await make('leaf-3');
  assert.match(
    await ok('add-children', 'edge-3', '--children', 'leaf-2, leaf-3'),
    /added leaf-2, leaf-3 as children of edge-3/,
  );
  const [children] = await Promise.all([
    okJson('list-children', 'edge-3'),
    refused(/leaf-deep is not a child of edge-3/, 'remove-children', 'edge-3', '--children', 'leaf-deep'),
    refused(/either --children a,b or --all/, 'remove-children', 'edge-3'),
  ]);
  assert.deepEqual(children, ['leaf-1', 'leaf-2', 'leaf-3']);

  assert.match(await ok('remove-children', 'edge-3', '--children', 'leaf-2'), /removed leaf-2 from edge-3/);
  const l2 = await show('leaf-2');
  assert.ok(!l2.deviceScope, 'a removed leaf has no scope');
  assert.deepEqual(l2.parentScopes ?? [], []);

  assert.deepEqual(await okJson('remove-children', 'edge-3', '--all'), {
    parentId: 'edge-3',
    removed: ['leaf-1', 'leaf-3'],
  });
  assert.match(await ok('list-children', 'edge-3'), /edge-3 has no children/);

  // An edge child removed keeps its scope and loses its parent.
  const subScope = await scopeOf('sub-child');
  await ok('remove-children', 'sub-top', '--children', 'sub-child');
  const sub = await show('sub-child');
  assert.equal(sub.deviceScope, subScope);
  assert.deepEqual(sub.parentScopes ?? [], []);
});

test('connection-string for a device, through a gateway, and for a module', async () => {
  const host = /HostName=([^;]+)/.exec(hub.connectionString)![1];
  const key = (await show('leaf-2')).authentication!.symmetricKey!.primaryKey!;
  const plain = `HostName=${host};DeviceId=leaf-2;SharedAccessKey=${key}`;
  const [cs, viaGw] = await Promise.all([
    ok('connection-string', 'leaf-2'),
    okJson('connection-string', 'leaf-2', '--gateway', 'gw.local'),
  ]);
  assert.equal(cs.trim(), plain);
  assert.deepEqual(viaGw, { connectionString: `${plain};GatewayHostName=gw.local` });

  await ok('module', 'create', 'leaf-2', 'filter');
  assert.match(await ok('module', 'list', 'leaf-2'), /^filter\s+sas/m);
  const mkey = (await svc.getModule('leaf-2', 'filter')).authentication!.symmetricKey!.primaryKey!;
  assert.ok(mkey && mkey !== key, 'the module has its own key');
  assert.equal(
    (await ok('connection-string', 'leaf-2', '--module', 'filter')).trim(),
    `HostName=${host};DeviceId=leaf-2;ModuleId=filter;SharedAccessKey=${mkey}`,
  );
  await ok('module', 'delete', 'leaf-2', 'filter');
  assert.ok(!(await svc.listModules('leaf-2')).some((m) => m.moduleId === 'filter'));

  await Promise.all([
    ok('create', 'thumb-1', '--auth', 'x509-thumbprint', '--primary-thumbprint', 'ab'.repeat(20)),
    refused(/needs --primary-thumbprint/, 'create', 'thumb-2', '--auth', 'x509-thumbprint'),
  ]);
  const t1 = await show('thumb-1');
  assert.equal(t1.authentication?.type, 'selfSigned');
  assert.equal(t1.authentication?.x509Thumbprint?.primaryThumbprint?.toUpperCase(), 'AB'.repeat(20));
  assert.equal((await ok('connection-string', 'thumb-1')).trim(), `HostName=${host};DeviceId=thumb-1;x509=true`);
});

test('twin update merges desired properties and tags; twin show prints them', async () => {
  await ok('twin', 'update', 'leaf-3', '--desired', '{"interval": 30, "mode": "eco"}', '--tags', '{"site": "oslo"}');
  await ok('twin', 'update', 'leaf-3', '--desired', '{"mode": null}');
  const [shown] = await Promise.all([
    ok('twin', 'show', 'leaf-3'),
    refused(/--desired is not valid JSON/, 'twin', 'update', 'leaf-3', '--desired', '{nope'),
    refused(/PreconditionFailed|HTTP 412/, 'twin', 'update', 'leaf-3', '--tags', '{"a":1}', '--etag', 'stale-etag'),
  ]);
  const twin = JSON.parse(shown);
  assert.equal(twin.deviceId, 'leaf-3');
  assert.equal(twin.properties.desired.interval, 30);
  assert.equal(twin.properties.desired.mode, undefined, 'null deleted the property');
  assert.equal(twin.tags.site, 'oslo');
  assert.equal(twin.tags.a, undefined, 'a stale etag changed nothing');
});

test('delete says which children lost their parent; common mistakes are one line each', async () => {
  await make('orphan-1', { parent: 'edge-3' });
  const [deleted] = await Promise.all([
    okJson('delete', 'edge-3'),
    refused(/DeviceAlreadyExists/, 'create', 'leaf-3'),
    refused(/device id "bad#id" contains the character "#"/, 'create', 'bad#id'),
    refused(/DeviceNotFound/, 'show', 'nobody'),
  ]);
  assert.deepEqual(deleted, { deleted: 'edge-3', orphanedChildren: ['orphan-1'] });
  await assert.rejects(show('edge-3'), /DeviceNotFound/);
});

test('a bad connection string, a wrong key and an untrusted CA each give one clear line', async () => {
  const one = async (pattern: RegExp, args: string[]) =>
    oneLine(await run(['device', 'list', ...args]), pattern, args.join(' '));
  const wrongKey = hub.connectionString.replace(
    /SharedAccessKey=[^;]*/,
    `SharedAccessKey=${Buffer.from('x'.repeat(32)).toString('base64')}`,
  );
  await Promise.all([
    one(/malformed connection string part "nonsense"/, ['--hub-connection-string', 'nonsense']),
    one(/lacks SharedAccessKey/, [
      '--hub-connection-string',
      hub.connectionString.replace(/;?SharedAccessKey=[^;]*/, ''),
    ]),
    one(/device connection string/, ['--hub-connection-string', 'HostName=h;DeviceId=d;SharedAccessKey=YWJj']),
    one(/HTTP 401/, ['--hub-connection-string', wrongKey, '--ca', hub.caPath]),
    one(/does not trust/, ['--hub-connection-string', hub.connectionString]),
    one(/cannot read the CA file/, ['--hub-connection-string', hub.connectionString, '--ca', '/nonexistent/ca.pem']),
    one(/either --hub-connection-string or --data/, [
      '--hub-connection-string',
      hub.connectionString,
      '--data',
      hub.dataDir,
    ]),
  ]);
});

test('the hub is also found through --data and through the environment', async () => {
  const [viaData, viaEnv] = await Promise.all([
    run(['device', 'get-parent', 'leaf-deep', '--data', hub.dataDir]),
    run(['device', 'get-parent', 'leaf-deep'], {
      STRATA_HUB_CONNECTION_STRING: hub.connectionString,
      STRATA_CA: hub.caPath,
    }),
  ]);
  assert.equal(viaData.code, 0, viaData.stderr);
  assert.equal(viaData.stdout.trim(), 'layer-5');
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  assert.equal(viaEnv.stdout.trim(), 'layer-5');
});
