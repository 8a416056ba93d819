/**
 * Images and blobs through three gateway layers, each on its own loopback address, with the
 * registry (Debian's docker-registry) reachable only from L1's config ([registry] upstream).
 * A deployment on L3 naming `$upstream:443/app:1` starts the container on Podman: the agent
 * resolves the name to L2 and signs the pull in as the L3 edge device (no registryCredentials in
 * the deployment); Podman trusts the chain's root CA for L2:443 the way a user sets it up
 * (certs.d). Blob uploads with curl at L3's `/storage/` land intact in the top layer's [blob] dir;
 * no credentials, a device outside the scope and a cut upload leave nothing there.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFile, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { deploymentManifest, metricValue, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { invokeWithSdk } from '../fixtures/service-messaging-helpers.ts';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { chainAddresses, edgeDeviceUnder, recordConnections, setupLayer, startLayers } from '../helpers/nested.ts';
import { skopeoMissing } from '../helpers/oci-image.ts';
import { podmanMissing, startPodman, TEST_IMAGE, type PodmanEngine } from '../helpers/podman.ts';
import { pollUntil } from '../helpers/poll.ts';
import { freePort, registryMissing, registrySection, startRegistry, type LocalRegistry } from '../helpers/registry.ts';

const run = promisify(execFile);
const skip = registryMissing() ?? skopeoMissing() ?? podmanMissing();

const [hubAddr, l1Addr, l2Addr, l3Addr] = chainAddresses();
const registryAddr = l3Addr.replace(/\d+$/, (n) => String(Number(n) + 1));

let hub: HubProcess;
let registry: LocalRegistry;
let engine: PodmanEngine;
let work: string;
let blobDir: string;
const layers: EdgeSetup[] = [];
const gws: GatewayProcess[] = [];
const cleanups: Array<() => unknown> = [];
let recorder: ReturnType<typeof recordConnections>;

/** curl, as a person uploads a file: PUT with Basic credentials, TLS checked against the root CA. */
async function curlPut(
  url: string,
  file: string,
  o: { creds?: string; headers?: string[] } = {},
): Promise<{ status: number; body: string }> {
  const args = ['-sS', '--cacert', layers[0].rootPath, '-T', file, '-o', '-', '-w', '\n%{http_code}'];
  if (o.creds) args.push('--user', o.creds);
  for (const h of o.headers ?? ['x-ms-blob-type: BlockBlob', 'x-ms-version: 2020-10-02']) args.push('-H', h);
  const { stdout } = await run('curl', [...args, url], { maxBuffer: 4 * 1024 * 1024 });
  const cut = stdout.lastIndexOf('\n');
  return { status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) };
}

const sha256 = async (path: string) =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => [])) {
    if (e.isFile()) out.push(join(e.parentPath ?? (e as unknown as { path: string }).path, e.name));
  }
  return out;
}

describe('images and blobs through three layers', { skip, timeout: 600_000 }, () => {
  let device3: { deviceId: string; token: string };

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'strata-upimg-'));
    cleanups.push(() => rm(work, { recursive: true, force: true }));
    blobDir = join(work, 'blobs');
    hub = await startHubProcess({ address: hubAddr });
    cleanups.push(() => hub.stop());
    registry = await startRegistry(await freePort(), registryAddr);
    cleanups.push(() => registry.stop());
    const addrs = [l1Addr, l2Addr, l3Addr];
    for (let i = 0; i < 3; i++) {
      const edge = await setupLayer(hub, { gatewayId: `upi-l${i + 1}`, address: addrs[i], parent: layers[i - 1] });
      layers.push(edge);
      cleanups.push(() => edge.cleanup());
    }
    // L3's engine trusts the chain's root CA for its parent's 443, as a user sets up certs.d.
    engine = await startPodman({ trust: [{ hostPort: `${l2Addr}:443`, caPem: layers[0].rootPem }] });
    cleanups.push(() => engine.stop());
    // The user's image in the user's registry; then gone from the engine, so the pull is real.
    await engine.podman([
      ...['push', '--tls-verify=false', '--creds', `${registry.username}:${registry.password}`],
      ...[TEST_IMAGE, `docker://${registry.host}/app:1`],
    ]);
    await engine.podman(['rmi', TEST_IMAGE]);
    await appendFile(
      layers[0].configPath,
      `${registrySection(registry)}\n[blob]\ndir = "${blobDir}"\nmax_size = "64MiB"\n`,
    );
    await appendFile(layers[2].configPath, `\n[moby_runtime]\nuri = "${engine.uri}"\n`);
    recorder = recordConnections({
      l1: () => gws[0]?.proc.pid,
      l2: () => gws[1]?.proc.pid,
      l3: () => gws[2]?.proc.pid,
    });
    cleanups.push(() => recorder.stop());
    await startLayers({ layers, gws, cleanups });
    device3 = await edgeDeviceUnder(hub, layers[2], 'upi-dev-under-l3');
  });
  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
  });

  test('a deployment on L3 naming $upstream:443/app:1 starts the container, pulled as the L3 device', async () => {
    const before = registry.requests().length;
    const app = {
      version: '1.0',
      type: 'docker',
      status: 'running',
      restartPolicy: 'always',
      settings: {
        image: '$upstream:443/app:1',
        createOptions: JSON.stringify({ Cmd: ['/bin/sh', '-c', 'echo up-through-the-chain; sleep 600'] }),
      },
    };
    await layers[2].svc.applyConfigurationContent(layers[2].gatewayId, deploymentManifest({ modules: { app } }));
    const state = await pollUntil(
      'the app container running',
      180_000,
      async () => {
        const all = JSON.parse(await engine.podman(['ps', '-a', '--format', 'json'])) as Array<{
          Labels?: Record<string, string>;
          State: string;
          Image: string;
          Names: string[];
        }>;
        const c = all.find((x) => x.Labels?.['net.strata.module'] === 'app');
        return c?.State === 'running' ? c : undefined;
      },
      async () => {
        const twin = await layers[2].svc.getTwin(layers[2].gatewayId, '$edgeAgent').catch((e: Error) => e.message);
        return `${JSON.stringify(typeof twin === 'string' ? twin : twin.properties?.reported)}\n${gws[2].output().slice(-4000)}`;
      },
    );
    assert.equal(state.Image, `${l2Addr}:443/app:1`);
    const logs = await engine.podman(['logs', state.Names[0]]);
    assert.match(logs, /up-through-the-chain/);
    // The image came from the user's registry, through L1 and L2, with the registry's digest.
    const pulled = registry.requests().slice(before);
    assert.ok(
      pulled.some((l) => l.includes('/v2/app/manifests/1')),
      pulled.join('\n'),
    );
    const { stdout: regDigest } = await run('skopeo', [
      ...['inspect', '--tls-verify=false', '--creds', `${registry.username}:${registry.password}`],
      ...['--format', '{{.Digest}}', `docker://${registry.host}/app:1`],
    ]);
    const local = (await engine.podman(['image', 'inspect', '--format', '{{.Digest}}', `${l2Addr}:443/app:1`])).trim();
    assert.equal(local, regDigest.trim());
    // L2 served the pull, which it answers only to a signed-in device of its scope (here L3 itself).
    assert.ok((metricValue(await gws[1].metrics(), 'edgehub_registry_pulls_total') ?? 0) >= 1);
  });

  test('a blob uploaded at L3 lands at the top layer directory intact', async () => {
    const file = join(work, 'upload.bin');
    await writeFile(file, randomBytes(24 * 1024 * 1024));
    const res = await curlPut(`https://${l3Addr}/storage/logs/upi-l3/edgeAgent-1.bin`, file, {
      creds: `${device3.deviceId}:${device3.token}`,
    });
    assert.equal(res.status, 201, res.body);
    const kept = join(blobDir, 'logs', 'upi-l3', 'edgeAgent-1.bin');
    assert.equal((await stat(kept)).size, 24 * 1024 * 1024);
    assert.equal(await sha256(kept), await sha256(file));
    assert.deepEqual(await filesUnder(join(blobDir, '.incoming')), []);
    const m3 = await gws[2].metrics();
    assert.equal(metricValue(m3, 'edgehub_blob_uploads_total', { result: 'forwarded' }), 1);
    assert.equal(metricValue(m3, 'edgehub_blob_bytes_total', { result: 'forwarded' }), 24 * 1024 * 1024);
    assert.equal(metricValue(await gws[0].metrics(), 'edgehub_blob_uploads_total', { result: 'kept' }), 1);
    // Nothing kept below the top.
    for (const l of layers.slice(1)) {
      for (const f of await filesUnder(l.dataDir)) assert.ok((await stat(f)).size < 24 * 1024 * 1024, f);
    }
  });

  test('refused: no credentials, a device outside the scope, a bad path; a cut upload leaves nothing', async () => {
    const file = join(work, 'small.bin');
    await writeFile(file, randomBytes(4096));
    const none = await curlPut(`https://${l3Addr}/storage/logs/anon.bin`, file);
    assert.equal(none.status, 401);
    assert.match(none.body, /<Code>AuthenticationFailed<\/Code>/);

    const outsider = await edgeDeviceUnder(hub, layers[0], 'upi-dev-under-l1');
    const out = await curlPut(`https://${l3Addr}/storage/logs/outsider.bin`, file, {
      creds: `${outsider.deviceId}:${outsider.token}`,
    });
    assert.equal(out.status, 403);
    assert.match(out.body, /<Code>AuthorizationFailure<\/Code>.*not in this gateway(&apos;|')s scope/s);

    const creds = `${device3.deviceId}:${device3.token}`;
    const bad = await curlPut(`https://${l3Addr}/storage/logs/..%2Fescape.bin`, file, { creds });
    assert.equal(bad.status, 400);
    assert.match(bad.body, /<Code>InvalidUri<\/Code>/);
    const noType = await curlPut(`https://${l3Addr}/storage/logs/x.bin`, file, { creds, headers: [] });
    assert.equal(noType.status, 400);
    assert.match(noType.body, /x-ms-blob-type is missing/);

    // 8 MiB announced, 1 MiB sent, then the connection dropped.
    await new Promise<void>((resolve) => {
      const req = https.request({
        host: l3Addr,
        port: 443,
        path: '/storage/logs/cut.bin',
        method: 'PUT',
        ca: layers[0].rootPem,
        headers: {
          Authorization: `Basic ${Buffer.from(creds).toString('base64')}`,
          'x-ms-blob-type': 'BlockBlob',
          'Content-Length': 8 * 1024 * 1024,
        },
      });
      req.on('error', () => resolve());
      req.on('response', (r) => {
        r.resume();
        resolve();
      });
      req.write(randomBytes(1024 * 1024), () => setTimeout(() => req.destroy(), 300));
    });
    await new Promise((r) => setTimeout(r, 1500));
    const kept = (await filesUnder(join(blobDir, 'logs'))).map((f) => f.slice(blobDir.length));
    assert.deepEqual(kept.sort(), ['/logs/upi-l3/edgeAgent-1.bin']);
    assert.ok((metricValue(await gws[2].metrics(), 'edgehub_blob_uploads_total', { result: 'refused' }) ?? 0) >= 4);
  });

  test('UploadModuleLogs on L3: the module logs land at the top layer, GetTaskStatus says Completed', async () => {
    const invoke = async (methodName: string, payload: unknown) => {
      const r = await invokeWithSdk(
        hub,
        layers[2].gatewayId,
        { methodName, payload, responseTimeoutInSeconds: 20, connectTimeoutInSeconds: 10 },
        '$edgeAgent',
      );
      assert.ok(r.ok, JSON.stringify(r));
      return r.result as { status: number; payload: any };
    };
    const started = await invoke('UploadModuleLogs', {
      schemaVersion: '1.0',
      sasUrl: 'https://$upstream/storage/edgelogs',
      items: [{ id: 'app', filter: { tail: 100 } }],
      encoding: 'none',
      contentType: 'text',
    });
    assert.equal(started.status, 200);
    assert.equal(started.payload.status, 'NotStarted');
    const done = await pollUntil('the upload task finished', 60_000, async () => {
      const r = await invoke('GetTaskStatus', { schemaVersion: '1.0', correlationId: started.payload.correlationId });
      return ['Completed', 'Failed'].includes(r.payload.status) ? r.payload : undefined;
    });
    assert.equal(done.status, 'Completed', done.message);
    const files = await filesUnder(join(blobDir, 'edgelogs', hub.hostname, layers[2].gatewayId));
    assert.equal(files.length, 1, files.join());
    assert.match(files[0], /\/app-\d{4}-\d\d-\d\d--\d\d-\d\d-\d\d\.log$/);
    assert.match(await readFile(files[0], 'utf8'), /up-through-the-chain/);

    const bad = await invoke('UploadModuleLogs', { schemaVersion: '1.0', items: [{ id: 'app' }] });
    assert.equal(bad.status, 400);
    assert.match(bad.payload.message, /needs a sasUrl/);
  });

  test('each layer connected only to its parent (L1 also to the registry)', () => {
    for (const [name, allowed] of [
      ['l3', [l2Addr]],
      ['l2', [l1Addr]],
      ['l1', [hubAddr, registryAddr]],
    ] as const) {
      const seen = recorder.seen(name);
      assert.ok(seen.length > 0, `${name}: connections were recorded`);
      for (const c of seen)
        assert.ok((allowed as readonly string[]).includes(c.split(':')[0]), `${name} connected to ${c}`);
    }
  });

  test('the top layer away: an upload at L3 gets a storage-style 503 and nothing is kept', async () => {
    await gws[0].stop();
    const file = join(work, 'late.bin');
    await writeFile(file, randomBytes(64 * 1024));
    const res = await curlPut(`https://${l3Addr}/storage/logs/late.bin`, file, {
      creds: `${device3.deviceId}:${device3.token}`,
    });
    assert.equal(res.status, 503);
    assert.match(res.body, /<Code>ServerBusy<\/Code>.*cannot reach the parent/s);
    await assert.rejects(stat(join(blobDir, 'logs', 'late.bin')));
  });
});
