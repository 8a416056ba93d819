/**
 * The registry API's parts without a hierarchy: the content cache (kept only when the digest
 * matches, LRU eviction at the cap, state across a reopen), `[registry]` parsing, byte ranges,
 * Basic credentials, and the proxy in front of an upstream that misbehaves on purpose (a corrupt
 * blob and manifest, a refusal of the gateway's credentials), which a real registry never does.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { parseEdgeConfig } from '../../src/edge/config.ts';
import { ContentCache } from '../../src/registry-proxy/cache.ts';
import { basicCredentials } from '../../src/registry-proxy/client-auth.ts';
import { parseByteSize, parseRegistrySection, type RegistryDiagnostic } from '../../src/registry-proxy/config.ts';
import { RegistryMetrics } from '../../src/registry-proxy/metrics.ts';
import { parseRange, registryProxy } from '../../src/registry-proxy/proxy.ts';
import { registryUpstream } from '../../src/registry-proxy/upstream.ts';

const log = pino({ level: 'silent' });
const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'strata-regcache-'));
  dirs.push(d);
  return d;
};
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function put(cache: ContentCache, body: Buffer, digest = digestOf(body)): Promise<boolean> {
  const w = cache.blobWriter(digest)!;
  await w.write(body.subarray(0, 10));
  await w.write(body.subarray(10));
  return w.commit();
}

describe('content cache', () => {
  test('keeps a blob only when its content matches its digest, and nothing half-written', async () => {
    const dir = tempDir();
    const cache = new ContentCache(dir, 1024 * 1024, log);
    const good = randomBytes(1000);
    assert.equal(await put(cache, good), true);
    assert.equal(cache.lookup('blobs', digestOf(good)), 1000);
    const bad = randomBytes(1000);
    assert.equal(await put(cache, bad, digestOf(randomBytes(10))), false);
    assert.equal(cache.count, 1);
    assert.deepEqual(readdirSync(join(dir, 'tmp')), []);
    const aborted = cache.blobWriter(digestOf(bad))!;
    await aborted.write(bad);
    aborted.abort();
    assert.equal(cache.lookup('blobs', digestOf(bad)), undefined);
    assert.deepEqual(readdirSync(join(dir, 'tmp')), []);
  });

  test('evicts the least recently used past the cap, and keeps its state across a reopen', async () => {
    const dir = tempDir();
    const cache = new ContentCache(dir, 2500, log);
    const [a, b, c] = [randomBytes(1000), randomBytes(1000), randomBytes(1000)];
    await put(cache, a);
    await new Promise((r) => setTimeout(r, 10));
    await put(cache, b);
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(cache.lookup('blobs', digestOf(a)), 1000); // a is now the most recently used
    await new Promise((r) => setTimeout(r, 10));
    await put(cache, c);
    assert.equal(cache.lookup('blobs', digestOf(b)), undefined, 'b was the least recently used');
    assert.equal(cache.bytes, 2000);
    const m = Buffer.from('{"schemaVersion":2}');
    cache.putManifest(digestOf(m), m, 'application/vnd.oci.image.manifest.v1+json');
    // A download a crash left behind is removed on open.
    writeFileSync(join(dir, 'tmp', 'leftover'), 'x');
    const again = new ContentCache(dir, 2500, log);
    assert.equal(again.lookup('blobs', digestOf(a)), 1000);
    assert.equal(again.lookup('blobs', digestOf(c)), 1000);
    assert.equal(again.readManifest(digestOf(m))?.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.deepEqual(readdirSync(join(dir, 'tmp')), []);
    // A smaller cap on the next start evicts at once, oldest first.
    const smaller = new ContentCache(dir, 1500, log);
    assert.ok(smaller.bytes <= 1500);
  });
});

describe('[registry] in config.toml', () => {
  const base = 'hostname = "10.0.0.2"\n';
  test('the top layer takes upstream and credentials, with defaults for the cache', () => {
    const { config } = parseEdgeConfig(
      `${base}[registry]\nupstream = "https://reg.example:5000/"\nusername = "u"\npassword = "p"\ncache_max_size = "500MiB"\n`,
    );
    assert.deepEqual(config.registry, {
      upstream: 'https://reg.example:5000',
      username: 'u',
      password: 'p',
      cacheMaxBytes: 500 * 1024 ** 2,
      tagCacheSecs: 60,
    });
  });
  test('a lower layer may not name an upstream nor hold credentials', () => {
    assert.throws(
      () => parseEdgeConfig(`${base}parent_hostname = "10.0.0.1"\n[registry]\nusername = "u"\npassword = "p"\n`),
      /registry.username is set on a gateway with a parent_hostname/,
    );
  });
  test('bad values name the field', () => {
    const diags: RegistryDiagnostic[] = [];
    parseRegistrySection(
      { upstream: 'ftp://x', cache_max_size: 'lots', tag_cache_secs: -1, username: 'u' },
      true,
      diags,
    );
    const text = diags.map((d) => d.message).join('\n');
    assert.match(text, /registry.upstream "ftp:\/\/x" is not an http\(s\) URL/);
    assert.match(text, /registry.cache_max_size "lots" is not a size/);
    assert.match(text, /registry.tag_cache_secs must be/);
    assert.match(text, /registry.username and registry.password go together/);
    assert.equal(parseByteSize('2GiB'), 2 * 1024 ** 3);
    assert.equal(parseByteSize(0), undefined);
  });
});

test('byte ranges and Basic credentials', () => {
  assert.deepEqual(parseRange('bytes=0-9', 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange('bytes=90-', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=-10', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=50-500', 100), { start: 50, end: 99 });
  assert.equal(parseRange('bytes=100-', 100), 'unsatisfiable');
  assert.equal(parseRange('bytes=0-1,5-6', 100), undefined);
  assert.deepEqual(basicCredentials(`Basic ${Buffer.from('d1:Shared a:b').toString('base64')}`), {
    user: 'd1',
    password: 'Shared a:b',
  });
  assert.equal(basicCredentials('Bearer x'), undefined);
});

describe('the proxy in front of an upstream that misbehaves', () => {
  const layer = randomBytes(300 * 1024);
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, layers: [] }));
  let upstream: http.Server;
  let gateway: http.Server;
  let gatewayPort: number;
  let cache: ContentCache;
  let metrics: Registry;
  let upstreamRequests = 0;

  before(async () => {
    upstream = http.createServer((req, res) => {
      upstreamRequests++;
      if (req.url === '/v2/refused/manifests/1') {
        res.writeHead(401, { 'Content-Type': 'application/json', 'WWW-Authenticate': 'Basic realm="upstream"' });
        return res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}');
      }
      if (req.url?.startsWith('/v2/good/blobs/')) {
        // Slowly, so that requests from several clients overlap.
        res.writeHead(200, { 'Content-Length': layer.length });
        res.write(layer.subarray(0, 1000));
        setTimeout(() => res.end(layer.subarray(1000)), 300);
        return;
      }
      if (req.url?.startsWith('/v2/app/blobs/')) {
        // The right length, the wrong content (one byte flipped at the end).
        const body = Buffer.from(layer);
        body[body.length - 1] ^= 0xff;
        res.writeHead(200, { 'Content-Length': body.length });
        return res.end(body);
      }
      if (req.url?.startsWith('/v2/app/manifests/')) {
        res.writeHead(200, { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' });
        return res.end(Buffer.concat([manifest, Buffer.from(' ')]));
      }
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const up = registryUpstream({ url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` });
    cache = new ContentCache(tempDir(), 10 * 1024 * 1024, log);
    metrics = new Registry();
    const handle = registryProxy({
      cache,
      upstream: up,
      authenticate: async () => ({ ok: true, who: 'device d' }),
      metrics: new RegistryMetrics(metrics, () => ({ bytes: cache.bytes, count: cache.count })),
      tagCacheMs: 60_000,
      realm: () => 'gw',
      log,
    });
    gateway = http.createServer(handle);
    await new Promise<void>((r) => gateway.listen(0, '127.0.0.1', r));
    gatewayPort = (gateway.address() as AddressInfo).port;
  });
  after(async () => {
    gateway.closeAllConnections();
    upstream.closeAllConnections();
    await new Promise((r) => gateway.close(r));
    await new Promise((r) => upstream.close(r));
  });

  const fetchGateway = (path: string, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer; complete: boolean }>((resolve) => {
      http
        .get({ host: '127.0.0.1', port: gatewayPort, path, headers }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          const done = () =>
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              body: Buffer.concat(chunks),
              complete: res.complete,
            });
          res.on('end', done);
          res.on('error', done);
          res.on('aborted', done);
        })
        .on('error', () => resolve({ status: 0, headers: {}, body: Buffer.alloc(0), complete: false }));
    });

  test('a corrupt blob is cut short, never handed over whole, and not kept', async () => {
    const res = await fetchGateway(`/v2/app/blobs/${digestOf(layer)}`);
    assert.equal(res.complete, false, 'the transfer was cut');
    assert.ok(res.body.length < layer.length);
    assert.equal(cache.count, 0);
    assert.match(await metrics.metrics(), /edgehub_registry_refusals_total\{reason="digest_mismatch"\} 1/);
    // Asked again, it goes upstream again: nothing was kept.
    const before = upstreamRequests;
    await fetchGateway(`/v2/app/blobs/${digestOf(layer)}`);
    assert.equal(upstreamRequests, before + 1);
  });

  test('clients asking for one blob at once cost one upstream download, and each gets it whole', async () => {
    const before = upstreamRequests;
    const all = await Promise.all([1, 2, 3, 4].map(() => fetchGateway(`/v2/good/blobs/${digestOf(layer)}`)));
    for (const r of all) {
      assert.equal(r.status, 200);
      assert.equal(digestOf(r.body), digestOf(layer));
    }
    assert.equal(upstreamRequests, before + 1);
    assert.equal(cache.lookup('blobs', digestOf(layer)), layer.length);
    // A range of a kept blob.
    const part = await fetchGateway(`/v2/good/blobs/${digestOf(layer)}`, { Range: 'bytes=100-199' });
    assert.equal(part.status, 206);
    assert.equal(part.headers['content-range'], `bytes 100-199/${layer.length}`);
    assert.deepEqual(part.body, layer.subarray(100, 200));
  });

  test('a manifest whose content does not match its digest is refused and not kept', async () => {
    const res = await fetchGateway(`/v2/app/manifests/${digestOf(manifest)}`);
    assert.equal(res.status, 502);
    const err = JSON.parse(res.body.toString()).errors[0];
    assert.equal(err.code, 'DIGEST_INVALID');
    assert.match(err.message, /whose content has digest/);
    assert.equal(cache.readManifest(digestOf(manifest)), undefined);
    assert.equal(cache.readManifest(digestOf(Buffer.concat([manifest, Buffer.from(' ')]))), undefined);
  });

  test("the upstream's refusal of the gateway's credentials reaches the client as a registry 401", async () => {
    const res = await fetchGateway('/v2/refused/manifests/1');
    assert.equal(res.status, 401);
    assert.equal(res.headers['www-authenticate'], 'Basic realm="gw"');
    assert.equal(JSON.parse(res.body.toString()).errors[0].code, 'UNAUTHORIZED');
  });
});
