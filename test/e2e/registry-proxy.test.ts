/**
 * Images through the hierarchy: a hub and three gateway layers, each on its own loopback
 * address, and Debian's docker-registry (CNCF Distribution) listening on an address only L1's
 * config.toml names ([registry] upstream, with the registry's credentials). skopeo, signed in at
 * L3 as an IoT Edge device of L3's scope with a SAS token, inspects and copies `L3:443/app:1`; the
 * digests are the registry's; a second pull at L3 and a pull by an edge device under L2 reach the
 * registry with no request (its access log); every gateway connects only to its parent (L1 also to
 * the registry). Refusals: no credentials (401 with a Basic challenge), a wrong token, a device
 * outside the scope, a push, and the registry down (503 in the registry's JSON form). L2 killed
 * with SIGKILL in the middle of a 24 MiB layer: the pull fails, the retry once L2 is back succeeds,
 * and every file any layer kept hashes to its name. Podman pulls `L2:443/app:1` signed in as the L3
 * edge device (what `$upstream:443/app:1` means on L3), and `strata edge check` sees each /v2/.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile, appendFile, readdir } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { execFile } from 'node:child_process';
import { metricValue, newKey, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import {
  chainAddresses,
  deviceToken,
  edgeDeviceUnder,
  recordConnections,
  setupLayer,
  startLayers,
} from '../helpers/nested.ts';
import { makeOciImage, pushImage, skopeo, skopeoMissing, type OciImage } from '../helpers/oci-image.ts';
import { podmanMissing, startPodman } from '../helpers/podman.ts';
import { freePort, registryMissing, registrySection, startRegistry, type LocalRegistry } from '../helpers/registry.ts';

const run = promisify(execFile);
const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const skip = registryMissing() ?? skopeoMissing();

const [hubAddr, l1Addr, l2Addr, l3Addr] = chainAddresses();
// One past L3: an address nothing but L1's config names.
const registryAddr = l3Addr.replace(/\d+$/, (n) => String(Number(n) + 1));

let hub: HubProcess;
let registry: LocalRegistry;
let image: OciImage;
let certDir: string;
const layers: EdgeSetup[] = [];
const gws: GatewayProcess[] = [];
const cleanups: Array<() => unknown> = [];
let recorder: ReturnType<typeof recordConnections>;

const edgeDevice = (parent: EdgeSetup, deviceId: string) => edgeDeviceUnder(hub, parent, deviceId);
const sasFor = (deviceId: string, key: string) => deviceToken(hub.hostname, deviceId, key);

const copyArgs = (who: { deviceId: string; token: string }) => [
  '--src-creds',
  `${who.deviceId}:${who.token}`,
  '--src-cert-dir',
  certDir,
];
const pullArgs = (who: { deviceId: string; token: string }) => [
  '--creds',
  `${who.deviceId}:${who.token}`,
  '--cert-dir',
  certDir,
];

/** One request to a gateway's 443 over TLS checked against the root CA. */
function get(
  address: string,
  path: string,
  o: { auth?: string; method?: string } = {},
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: address,
        port: 443,
        path,
        method: o.method ?? 'GET',
        ca: layers[0].rootPem,
        headers: o.auth ? { Authorization: o.auth } : {},
      },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Waits for a line in a gateway's output. */
async function logged(gw: GatewayProcess, pattern: RegExp): Promise<void> {
  for (let i = 0; i < 50 && !pattern.test(gw.output()); i++) await new Promise((r) => setTimeout(r, 100));
  assert.match(gw.output(), pattern);
}

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

describe('the registry API through three gateway layers', { skip }, () => {
  let device3: { deviceId: string; token: string };

  before(async () => {
    hub = await startHubProcess({ address: hubAddr });
    cleanups.push(() => hub.stop());
    registry = await startRegistry(await freePort(), registryAddr);
    cleanups.push(() => registry.stop());
    image = await makeOciImage('1');
    cleanups.push(() => rm(join(image.dir, '..'), { recursive: true, force: true }));
    await pushImage(image, registry, 'app');
    const addrs = [l1Addr, l2Addr, l3Addr];
    for (let i = 0; i < 3; i++) {
      const edge = await setupLayer(hub, { gatewayId: `reg-l${i + 1}`, address: addrs[i], parent: layers[i - 1] });
      layers.push(edge);
      cleanups.push(() => edge.cleanup());
    }
    await appendFile(layers[0].configPath, registrySection(registry));
    certDir = await mkdtemp(join(tmpdir(), 'strata-certdir-'));
    cleanups.push(() => rm(certDir, { recursive: true, force: true }));
    await writeFile(join(certDir, 'root.crt'), layers[0].rootPem);
    recorder = recordConnections({
      l1: () => gws[0]?.proc.pid,
      l2: () => gws[1]?.proc.pid,
      l3: () => gws[2]?.proc.pid,
    });
    cleanups.push(() => recorder.stop());
    await startLayers({ layers, gws, cleanups });
    // A person's way to a token: `strata device token ID`.
    const created = await edgeDevice(layers[2], 'reg-dev-under-l3');
    const { stdout } = await run(process.execPath, [
      STRATA_BIN,
      ...['device', 'token', created.deviceId, '--hub-connection-string', hub.connectionString, '--ca', hub.caPath],
    ]);
    device3 = { deviceId: created.deviceId, token: stdout.trim() };
    assert.match(device3.token, /^SharedAccessSignature sr=.+%2Fdevices%2Freg-dev-under-l3&sig=/);
  });
  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
  });

  test('skopeo inspect and copy at L3 get the registry image, with its digests', async () => {
    const inspected = JSON.parse(await skopeo(['inspect', ...pullArgs(device3), `docker://${l3Addr}:443/app:1`]));
    assert.equal(inspected.Digest, image.manifestDigest);
    assert.deepEqual(inspected.Layers, [image.layerDigest]);
    const out = await mkdtemp(join(tmpdir(), 'strata-pulled-'));
    cleanups.push(() => rm(out, { recursive: true, force: true }));
    await skopeo(['copy', ...copyArgs(device3), `docker://${l3Addr}:443/app:1`, `oci:${out}:app`]);
    const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8'));
    assert.equal(index.manifests[0].digest, image.manifestDigest);
    const blobs = await readdir(join(out, 'blobs', 'sha256'));
    for (const d of [image.layerDigest, image.configDigest, image.manifestDigest])
      assert.ok(blobs.includes(d.slice(7)), d);
    // Every layer has the blobs and the manifest in its cache.
    for (const l of layers) {
      const kept = await readdir(join(l.dataDir, 'registry-cache', 'blobs'));
      assert.ok(kept.includes(image.layerDigest.slice(7)), `${l.gatewayId} keeps the layer`);
    }
    const m3 = await gws[2].metrics();
    assert.ok((metricValue(m3, 'edgehub_registry_pulls_total') ?? 0) >= 1);
    assert.ok((metricValue(m3, 'edgehub_registry_bytes_total', { source: 'parent' }) ?? 0) >= 256 * 1024);
  });

  test('a second pull at L3 and a pull under L2 are served without a request to the registry', async () => {
    const before = registry.requests().length;
    const out = await mkdtemp(join(tmpdir(), 'strata-pulled-'));
    cleanups.push(() => rm(out, { recursive: true, force: true }));
    await skopeo(['copy', ...copyArgs(device3), `docker://${l3Addr}:443/app:1`, `oci:${join(out, 'a')}:app`]);
    const device2 = await edgeDevice(layers[1], 'reg-dev-under-l2');
    await skopeo(['copy', ...copyArgs(device2), `docker://${l2Addr}:443/app:1`, `oci:${join(out, 'b')}:app`]);
    for (const d of ['a', 'b']) {
      const index = JSON.parse(await readFile(join(out, d, 'index.json'), 'utf8'));
      assert.equal(index.manifests[0].digest, image.manifestDigest);
    }
    assert.deepEqual(registry.requests().slice(before), []);
    const m3 = await gws[2].metrics();
    assert.ok((metricValue(m3, 'edgehub_registry_cache_hits_total', { kind: 'blob' }) ?? 0) >= 2);
    assert.ok((metricValue(m3, 'edgehub_registry_bytes_total', { source: 'cache' }) ?? 0) >= 256 * 1024);
    const m2 = await gws[1].metrics();
    assert.ok((metricValue(m2, 'edgehub_registry_cache_hits_total', { kind: 'manifest' }) ?? 0) >= 1);
  });

  test('refusals: no credentials, a wrong token, a device outside the scope, a push', async () => {
    const none = await get(l3Addr, '/v2/app/manifests/1');
    assert.equal(none.status, 401);
    assert.match(String(none.headers['www-authenticate']), /^Basic realm="/);
    assert.equal(JSON.parse(none.body).errors[0].code, 'UNAUTHORIZED');

    const wrong = await get(l3Addr, '/v2/app/manifests/1', {
      auth: basic(device3.deviceId, sasFor(device3.deviceId, newKey())),
    });
    assert.equal(wrong.status, 401);
    assert.match(JSON.parse(wrong.body).errors[0].message, /signature does not match/);
    await logged(gws[2], /reg-dev-under-l3: SAS token signature does not match/);

    const outsider = await edgeDevice(layers[0], 'reg-dev-under-l1');
    const out = await get(l3Addr, '/v2/app/manifests/1', { auth: basic(outsider.deviceId, outsider.token) });
    assert.equal(out.status, 403);
    const err = JSON.parse(out.body).errors[0];
    assert.equal(err.code, 'DENIED');
    assert.match(err.message, /not in this gateway's scope/);
    await logged(gws[2], /device reg-dev-under-l1 is not in this gateway's scope/);
    await assert.rejects(
      skopeo(['inspect', ...pullArgs(outsider), `docker://${l3Addr}:443/app:1`]),
      /not in this gateway's scope|denied/i,
    );

    const push = await get(l3Addr, '/v2/app/blobs/uploads/', {
      method: 'POST',
      auth: basic(device3.deviceId, device3.token),
    });
    assert.equal(push.status, 405);
    assert.equal(JSON.parse(push.body).errors[0].code, 'UNSUPPORTED');
  });

  test('each layer connects only to its parent; L1 also to the registry', () => {
    const l3 = recorder.seen('l3');
    const l2 = recorder.seen('l2');
    const l1 = recorder.seen('l1');
    assert.ok(l3.length > 0 && l2.length > 0 && l1.length > 0, 'connections were recorded');
    for (const c of l3) assert.equal(c.split(':')[0], l2Addr, `L3 connected to ${c}`);
    for (const c of l2) assert.equal(c.split(':')[0], l1Addr, `L2 connected to ${c}`);
    for (const c of l1) assert.ok([hubAddr, registryAddr].includes(c.split(':')[0]), `L1 connected to ${c}`);
    assert.ok(l1.includes(registry.host), 'L1 reached the registry');
  });

  test("strata edge check: L3's parent serves /v2/, L1's upstream registry answers", async () => {
    for (const [i, expected] of [
      [2, `parent ${l2Addr} serves the registry API`],
      [0, `upstream registry answers (http://${registry.host})`],
    ] as const) {
      const { stdout } = await run(process.execPath, [
        ...[STRATA_BIN, 'edge', 'check', '--config', layers[i].configPath, '--data', layers[i].dataDir, '--json'],
      ]).catch((err: { stdout: string }) => ({ stdout: err.stdout }));
      const found = (JSON.parse(stdout) as Array<{ id: string; status: string; title: string; detail: string }>).find(
        (r) => r.id === 'registry',
      );
      assert.equal(found?.status, 'pass', JSON.stringify(found));
      assert.ok(found.title.startsWith(expected), found.title);
    }
  });

  test('Podman on the L3 device pulls `$upstream:443/app:1` resolved to its parent, as L3 itself', {
    skip: podmanMissing(),
  }, async () => {
    // What the agent on L3 does for a module image named $upstream:443/app:1: the parent's host
    // name, and the edge device's own identity.
    const engine = await startPodman();
    cleanups.push(() => engine.stop());
    const token = sasFor(layers[2].gatewayId, layers[2].gatewayKey);
    const ref = `${l2Addr}:443/app:1`;
    await engine.podman(['pull', '--cert-dir', certDir, '--creds', `${layers[2].gatewayId}:${token}`, ref]);
    const digest = (await engine.podman(['image', 'inspect', '--format', '{{.Digest}}', ref])).trim();
    assert.equal(digest, image.manifestDigest);
  });

  test('L2 killed mid-pull: the retry succeeds once it is back, and no cache keeps anything corrupt', async () => {
    const big = await makeOciImage('2', 24 * 1024 * 1024);
    cleanups.push(() => rm(join(big.dir, '..'), { recursive: true, force: true }));
    await pushImage(big, registry, 'app');
    const out = await mkdtemp(join(tmpdir(), 'strata-pulled-'));
    cleanups.push(() => rm(out, { recursive: true, force: true }));
    const tmp3 = join(layers[2].dataDir, 'registry-cache', 'tmp');
    const first = skopeo([
      'copy',
      ...copyArgs(device3),
      `docker://${l3Addr}:443/app:2`,
      `oci:${join(out, 'a')}:app`,
    ]).then(
      () => undefined,
      (err: Error) => err,
    );
    // Until L3 is receiving the big layer.
    const deadline = Date.now() + 60_000;
    while (!(await readdir(tmp3)).some((f) => f.startsWith(big.layerDigest.slice(7)))) {
      assert.ok(Date.now() < deadline, 'L3 never started fetching the layer');
      await new Promise((r) => setTimeout(r, 5));
    }
    await gws[1].kill9();
    assert.ok((await first) instanceof Error, 'the pull was cut by the kill');
    gws[1] = await startGatewayProcess({
      configPath: layers[1].configPath,
      dataDir: layers[1].dataDir,
      address: l2Addr,
    });
    // L2's cache outlived the kill: app:1's blobs come from its disk, none from the registry.
    const blobsBefore = registry.requests().filter((l) => l.includes('/blobs/')).length;
    const asL3 = { deviceId: layers[2].gatewayId, token: sasFor(layers[2].gatewayId, layers[2].gatewayKey) };
    await skopeo(['copy', ...copyArgs(asL3), `docker://${l2Addr}:443/app:1`, `oci:${join(out, 'c')}:app`]);
    assert.equal(registry.requests().filter((l) => l.includes('/blobs/')).length, blobsBefore);
    assert.ok((metricValue(await gws[1].metrics(), 'edgehub_registry_cache_hits_total', { kind: 'blob' }) ?? 0) >= 2);
    await skopeo(['copy', ...copyArgs(device3), `docker://${l3Addr}:443/app:2`, `oci:${join(out, 'b')}:app`]);
    const index = JSON.parse(await readFile(join(out, 'b', 'index.json'), 'utf8'));
    assert.equal(index.manifests[0].digest, big.manifestDigest);
    // Whatever any layer kept hashes to its name.
    for (const l of layers) {
      for (const kind of ['blobs', 'manifests']) {
        const dir = join(l.dataDir, 'registry-cache', kind);
        for (const f of (await readdir(dir)).filter((n) => /^[a-f0-9]{64}$/.test(n))) {
          assert.equal(
            createHash('sha256')
              .update(await readFile(join(dir, f)))
              .digest('hex'),
            f,
            `${l.gatewayId} ${kind}/${f}`,
          );
        }
      }
      assert.ok((await readdir(join(l.dataDir, 'registry-cache', 'blobs'))).includes(big.layerDigest.slice(7)));
    }
  });

  test("a blob damaged in the registry's own storage: the pull at L3 fails and no layer keeps it", async () => {
    const img = await makeOciImage('3');
    cleanups.push(() => rm(join(img.dir, '..'), { recursive: true, force: true }));
    await pushImage(img, registry, 'app');
    // A disk fault under the registry: same length, one byte changed; the registry serves it as it is.
    const file = registry.blobFile(img.layerDigest);
    const bytes = await readFile(file);
    bytes[bytes.length >> 1] ^= 0xff;
    await writeFile(file, bytes);
    const out = await mkdtemp(join(tmpdir(), 'strata-pulled-'));
    cleanups.push(() => rm(out, { recursive: true, force: true }));
    const pulled = await skopeo([
      'copy',
      ...copyArgs(device3),
      `docker://${l3Addr}:443/app:3`,
      `oci:${join(out, 'bad')}:app`,
    ]).then(
      () => undefined,
      (err: Error) => err,
    );
    assert.ok(pulled instanceof Error, 'skopeo did not get the damaged layer as if it were whole');
    for (const l of layers) {
      const kept = await readdir(join(l.dataDir, 'registry-cache', 'blobs'));
      assert.ok(!kept.includes(img.layerDigest.slice(7)), `${l.gatewayId} kept the damaged layer`);
    }
    assert.ok(
      (metricValue(await gws[0].metrics(), 'edgehub_registry_refusals_total', { reason: 'digest_mismatch' }) ?? 0) >= 1,
      'L1, the layer that fetched it from the registry, counted a digest mismatch',
    );
  });

  test("a wrong registry password at the top: the client at L3 gets the registry's 401", async () => {
    await gws[0].stop();
    const text = await readFile(layers[0].configPath, 'utf8');
    await writeFile(layers[0].configPath, text.replace(`password = "${registry.password}"`, 'password = "wrong"'));
    gws[0] = await startGatewayProcess({
      configPath: layers[0].configPath,
      dataDir: layers[0].dataDir,
      address: l1Addr,
    });
    const res = await get(l3Addr, '/v2/app/manifests/not-cached', { auth: basic(device3.deviceId, device3.token) });
    assert.equal(res.status, 401);
    assert.match(String(res.headers['www-authenticate']), /^Basic realm="/);
    assert.equal(JSON.parse(res.body).errors[0].code, 'UNAUTHORIZED');
    await logged(gws[0], /the upstream registry http:\/\/[^ ]+ refused this gateway's credentials/);
  });

  test('the registry down: a tag not cached gets a registry-style 503 that says so', async () => {
    await registry.stop();
    const res = await get(l3Addr, '/v2/app/manifests/never-pushed', { auth: basic(device3.deviceId, device3.token) });
    assert.equal(res.status, 503);
    const err = JSON.parse(res.body).errors[0];
    assert.equal(err.code, 'UNAVAILABLE');
    assert.match(err.message, /cannot reach the upstream registry http:\/\//);
    // What is cached is still served.
    const cached = await get(l3Addr, `/v2/app/blobs/${image.layerDigest}`, {
      auth: basic(device3.deviceId, device3.token),
    });
    assert.equal(cached.status, 200);
  });
});
