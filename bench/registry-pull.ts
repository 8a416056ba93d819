/**
 * An image pulled through three gateway layers: a hub, L1-L3 each on its own loopback address,
 * Debian's docker-registry reachable only from L1 ([registry] upstream). One image with one
 * layer of `--mb` MiB of random bytes (incompressible) is copied to an OCI directory with skopeo:
 *
 *   direct  straight from the registry (the baseline, same run)
 *   cold    at L3, signed in as an edge device under L3: every layer fetches, checks and keeps it
 *   warm    at L3 again: served from L3's cache
 *
 * Each gateway's RSS is sampled from /proc every 50 ms during each pull; the peak is printed with
 * the RSS before the pull, so growth with the image size would show.
 *
 *   node --import tsx bench/registry-pull.ts [--mb 200]
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { appendFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import type { EdgeSetup, GatewayProcess } from '../test/helpers/edge.ts';
import { startHubProcess } from '../test/helpers/hub.ts';
import { chainAddresses, edgeDeviceUnder, setupLayer, startLayers } from '../test/helpers/nested.ts';
import { makeOciImage, pushImage, skopeo } from '../test/helpers/oci-image.ts';
import { freePort, registrySection, startRegistry } from '../test/helpers/registry.ts';

const { values: args } = parseArgs({ options: { mb: { type: 'string', default: '200' } } });
const MB = Number(args.mb);
const run = promisify(execFile);

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Runs `fn` while sampling each gateway's RSS; returns seconds taken and per-gateway before/peak. */
async function measured(gws: GatewayProcess[], fn: () => Promise<unknown>) {
  const before = gws.map((g) => rssOf(g.proc.pid!));
  const peak = [...before];
  const timer = setInterval(() => {
    gws.forEach((g, i) => {
      peak[i] = Math.max(peak[i], rssOf(g.proc.pid!));
    });
  }, 50);
  const t0 = process.hrtime.bigint();
  await fn();
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  clearInterval(timer);
  return { secs, before, peak };
}

const cleanups: Array<() => unknown> = [];
try {
  const [hubAddr, l1, l2, l3] = chainAddresses();
  const registryAddr = l3.replace(/\d+$/, (n) => String(Number(n) + 1));
  const hub = await startHubProcess({ address: hubAddr });
  cleanups.push(() => hub.stop());
  const registry = await startRegistry(await freePort(), registryAddr);
  cleanups.push(() => registry.stop());
  const image = await makeOciImage('big', MB * 1024 * 1024);
  cleanups.push(() => rm(join(image.dir, '..'), { recursive: true, force: true }));
  await pushImage(image, registry, 'app');

  const layers: EdgeSetup[] = [];
  const gws: GatewayProcess[] = [];
  for (const [i, address] of [l1, l2, l3].entries()) {
    const edge = await setupLayer(hub, { gatewayId: `bench-reg-l${i + 1}`, address, parent: layers[i - 1] });
    layers.push(edge);
    cleanups.push(() => edge.cleanup());
  }
  await appendFile(layers[0].configPath, registrySection(registry));
  await startLayers({ layers, gws, cleanups });
  const device = await edgeDeviceUnder(hub, layers[2], 'bench-reg-dev');
  const work = await mkdtemp(join(tmpdir(), 'strata-bench-pull-'));
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  const certDir = join(work, 'certs');
  await run('mkdir', ['-p', certDir]);
  await run('cp', [layers[0].rootPath, join(certDir, 'root.crt')]);

  const viaL3 = (out: string) =>
    skopeo(
      [
        ...['copy', '--src-creds', `${device.deviceId}:${device.token}`, '--src-cert-dir', certDir],
        ...[`docker://${l3}:443/app:big`, `oci:${join(work, out)}:app`],
      ],
      600_000,
    );
  const direct = await measured(gws, () =>
    skopeo(
      [
        ...['copy', '--src-tls-verify=false', '--src-creds', `${registry.username}:${registry.password}`],
        ...[`docker://${registry.host}/app:big`, `oci:${join(work, 'direct')}:app`],
      ],
      600_000,
    ),
  );
  const cold = await measured(gws, () => viaL3('cold'));
  const blobsBefore = registry.requests().filter((l) => l.includes('/blobs/')).length;
  const warm = await measured(gws, () => viaL3('warm'));
  const warmRegistryBlobs = registry.requests().filter((l) => l.includes('/blobs/')).length - blobsBefore;

  const mib = (n: number) => Math.round((n / 1024 / 1024) * 10) / 10;
  const row = (name: string, r: Awaited<ReturnType<typeof measured>>) => ({
    pull: name,
    seconds: Math.round(r.secs * 100) / 100,
    MiBps: Math.round((MB / r.secs) * 10) / 10,
    ...Object.fromEntries(
      ['L1', 'L2', 'L3'].map((l, i) => [`${l} RSS MiB before/peak`, `${mib(r.before[i])}/${mib(r.peak[i])}`]),
    ),
  });
  const rows = [row('direct (skopeo from the registry)', direct), row('cold via L3', cold), row('warm via L3', warm)];
  console.table(rows);
  console.log(JSON.stringify({ imageMiB: MB, rows, warmRegistryBlobRequests: warmRegistryBlobs }));
} finally {
  for (const fn of cleanups.reverse()) await fn();
}
