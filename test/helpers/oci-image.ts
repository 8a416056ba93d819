import { execFile, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A tiny OCI image made without the internet (one gzip layer holding a few files, written as an
 * OCI layout), and skopeo to push it to a registry and to pull it through gateways.
 */

const run = promisify(execFile);

export function skopeoMissing(): string | undefined {
  return spawnSync('sh', ['-c', 'command -v skopeo']).status === 0
    ? undefined
    : 'skopeo is not installed (apt-get install skopeo)';
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface OciImage {
  /** The OCI layout directory; the image is `oci:${dir}:${tag}`. */
  dir: string;
  tag: string;
  manifestDigest: string;
  layerDigest: string;
  configDigest: string;
}

/** Writes an OCI layout with one image: a layer of `layerBytes` random bytes (in a file) and a config. */
export async function makeOciImage(tag = '1', layerBytes = 256 * 1024): Promise<OciImage> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-oci-'));
  const src = join(dir, 'rootfs');
  await mkdir(src);
  await writeFile(join(src, 'payload.bin'), randomBytes(layerBytes));
  await writeFile(join(src, 'hello.txt'), `hello from ${tag}\n`);
  const layout = join(dir, 'layout');
  const blobs = join(layout, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });
  await run('tar', ['-cf', join(dir, 'layer.tar'), '-C', src, '.']);
  const tar = await readFile(join(dir, 'layer.tar'));
  await run('gzip', ['-1', '-n', '-k', join(dir, 'layer.tar')]);
  const gz = await readFile(join(dir, 'layer.tar.gz'));
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/hello.txt'] },
      rootfs: { type: 'layers', diff_ids: [sha(tar)] },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(gz), size: gz.length }],
    }),
  );
  for (const b of [gz, config, manifest]) await writeFile(join(blobs, sha(b).slice(7)), b);
  await writeFile(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: sha(manifest),
          size: manifest.length,
          annotations: { 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  );
  return { dir: layout, tag, manifestDigest: sha(manifest), layerDigest: sha(gz), configDigest: sha(config) };
}

/** Runs skopeo; resolves with its output, rejects with its stderr in the message. */
export async function skopeo(args: string[], timeoutMs = 120_000): Promise<string> {
  try {
    const { stdout } = await run('skopeo', args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`skopeo ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}

/** Pushes the image to a plain-HTTP registry as `repo:tag`. */
export async function pushImage(
  image: OciImage,
  registry: { host: string; username: string; password: string },
  repo: string,
) {
  await skopeo([
    'copy',
    '--dest-tls-verify=false',
    '--dest-creds',
    `${registry.username}:${registry.password}`,
    `oci:${image.dir}:${image.tag}`,
    `docker://${registry.host}/${repo}:${image.tag}`,
  ]);
}
