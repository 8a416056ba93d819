/**
 * The blob relay's parts without a hierarchy: blob paths (what may become a file under the
 * directory), `[blob]` parsing, and the directory target (kept only whole, with a matching
 * Content-MD5, under the size cap).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, test } from 'node:test';
import { BlobDirectory, blobSegments } from '../../src/blob-relay/blob-dir.ts';
import { parseEdgeConfig } from '../../src/edge/config.ts';

const dir = mkdtempSync(join(tmpdir(), 'strata-blobdir-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('blob paths', () => {
  test('a container and a name, slashes making folders', () => {
    assert.deepEqual(blobSegments('logs/dev%201/a.txt'), ['logs', 'dev 1', 'a.txt']);
  });
  test('refused: no blob name, dot segments, encoded slashes, a bad container name', () => {
    assert.match(blobSegments('logs') as string, /names no blob/);
    assert.match(blobSegments('logs/../x') as string, /"\.\."/);
    assert.match(blobSegments('logs/%2E%2E/x') as string, /"\.\."/);
    assert.match(blobSegments('logs/a%2Fb') as string, /slash/);
    assert.match(blobSegments('logs//a') as string, /empty/);
    assert.match(blobSegments('Logs/a') as string, /not a container name/);
    assert.match(blobSegments('.incoming/a') as string, /not a container name/);
    assert.match(blobSegments('ab/a') as string, /not a container name/);
    assert.match(blobSegments('logs/%E0%A4%A') as string, /percent-encoded/);
  });
});

describe('[blob] in config.toml', () => {
  const base = 'hostname = "10.0.0.2"\n';
  test('the top layer keeps blobs in dir, relative to the config file', () => {
    const { config } = parseEdgeConfig(`${base}[blob]\ndir = "/srv/blobs"\nmax_size = "10MiB"\n`);
    assert.deepEqual(config.blob, { dir: '/srv/blobs', maxBytes: 10 * 1024 ** 2 });
  });
  test('a lower layer keeps nothing; a bad size names the field', () => {
    assert.throws(
      () => parseEdgeConfig(`${base}parent_hostname = "10.0.0.1"\n[blob]\ndir = "/srv/blobs"\n`),
      /blob.dir is set on a gateway with a parent_hostname/,
    );
    assert.throws(() => parseEdgeConfig(`${base}[blob]\nmax_size = "lots"\n`), /blob.max_size "lots" is not a size/);
  });
});

describe('the directory target', () => {
  const store = new BlobDirectory(dir, 1024 * 1024);
  test('a whole blob with its Content-MD5 is kept under its path', async () => {
    const body = randomBytes(300_000);
    const md5 = createHash('md5').update(body).digest('base64');
    const kept = await store.put(['logs', 'd', 'a.bin'], Readable.from([body]), {
      contentLength: body.length,
      contentMd5: md5,
    });
    assert.equal(kept.sha256, createHash('sha256').update(body).digest('hex'));
    assert.deepEqual(readFileSync(join(dir, 'logs', 'd', 'a.bin')), body);
  });
  test('a wrong MD5, a short body or one over the cap leaves no file', async () => {
    const body = randomBytes(1000);
    await assert.rejects(store.put(['logs', 'b.bin'], Readable.from([body]), { contentMd5: 'AAAA' }), /MD5/);
    await assert.rejects(
      store.put(['logs', 'c.bin'], Readable.from([body]), { contentLength: 2000 }),
      /received 1000 of the 2000/,
    );
    await assert.rejects(store.put(['logs', 'd.bin'], Readable.from([randomBytes(1024 * 1024 + 1)])), /max_size/);
    assert.deepEqual(readdirSync(join(dir, 'logs')).sort(), ['d']);
    assert.deepEqual(readdirSync(join(dir, '.incoming')), []);
  });
});
