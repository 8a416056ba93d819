import { type ChildProcess, execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, realpath, rm, symlink, writeFile, copyFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

/**
 * A real container engine for tests: Podman serving the Docker Engine API on a unix socket in a
 * temp dir, with its own storage (so tests never see or touch other containers on the machine)
 * and a small image built here without the internet: a static busybox in an empty root.
 */

const run = promisify(execFile);

/** The image every engine test uses: `/bin/sh` and busybox's applets, nothing else. */
export const TEST_IMAGE = 'localhost/strata-test-busybox:1';

export interface PodmanEngine {
  dir: string;
  socketPath: string;
  /** `[moby_runtime] uri` for it. */
  uri: string;
  image: string;
  /** Runs the podman CLI against this engine's storage (for checks a test makes behind the API). */
  podman(args: string[]): Promise<string>;
  /** Stops the API service and starts it again on the same socket; containers keep running. */
  restartService(): Promise<void>;
  stop(): Promise<void>;
}

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Why engine tests cannot run here, or undefined when they can. */
export function podmanMissing(): string | undefined {
  if (process.platform !== 'linux') return 'the engine tests need Linux';
  if (!which('podman')) return 'podman is not installed (apt-get install podman runc busybox-static)';
  if (!which('runc')) return 'runc is not installed (apt-get install runc)';
  if (!which('busybox')) return 'busybox is not installed (apt-get install busybox-static)';
  return undefined;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

/** GET /version until it answers: the service is up. */
async function waitForVersion(socketPath: string, service: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const req = http.get({ socketPath, path: '/version', timeout: 1000 }, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      });
      req.on('error', () => resolve(false));
      req.on('timeout', () => {
        req.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    if (service.exitCode !== null) throw new Error(`podman system service exited with ${service.exitCode}`);
    if (Date.now() > deadline) throw new Error(`podman system service did not answer /version in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface PodmanOptions {
  /** host:port of registries spoken to over plain HTTP (a local test registry). */
  insecureRegistries?: string[];
  /**
   * Registries whose TLS certificate chains to `caPem` (a gateway's `/v2/` on host:443): what a
   * user does with `/etc/containers/certs.d/HOST:PORT/ca.crt`, here in the engine's own home
   * (`$HOME/.config/containers/certs.d`, which containers/image reads first) so /etc is untouched.
   */
  trust?: Array<{ hostPort: string; caPem: string }>;
}

/**
 * Writes `dir`/containers.conf for an engine of its own in `dir`, and returns its path. The two
 * settings these machines need (see the container engine notes): no default ulimits, which the
 * kernel refuses to raise here, and runc, since crun refuses the hybrid cgroup layout. tmp_dir
 * keeps this engine's locks and events apart from any other Podman on the machine; file locks,
 * there, since the default shared-memory locks are one table for every Podman of the machine,
 * which a new engine's start frees whole and a killed process leaves held.
 */
export async function writeEngineConf(dir: string): Promise<string> {
  const conf = join(dir, 'containers.conf');
  await writeFile(
    conf,
    [
      '[containers]',
      'default_ulimits = []',
      '[engine]',
      'runtime = "runc"',
      'lock_type = "file"',
      `tmp_dir = "${join(dir, 'tmp')}"`,
      'events_logger = "file"',
      '',
    ].join('\n'),
  );
  return conf;
}

export async function startPodman(opts: PodmanOptions = {}): Promise<PodmanEngine> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-podman-'));
  const conf = await writeEngineConf(dir);
  // Only the registries named here, and no short-name lookups that would reach the internet.
  const registriesConf = join(dir, 'registries.conf');
  await writeFile(
    registriesConf,
    [
      'unqualified-search-registries = []',
      ...(opts.insecureRegistries ?? []).flatMap((r) => ['[[registry]]', `location = "${r}"`, 'insecure = true']),
      '',
    ].join('\n'),
  );
  const home = join(dir, 'home');
  await mkdir(home, { recursive: true });
  for (const t of opts.trust ?? []) {
    const certs = join(home, '.config', 'containers', 'certs.d', t.hostPort);
    await mkdir(certs, { recursive: true });
    await writeFile(join(certs, 'ca.crt'), t.caPem);
  }
  const env = { ...process.env, HOME: home, CONTAINERS_CONF: conf, CONTAINERS_REGISTRIES_CONF: registriesConf };
  const storage = ['--root', join(dir, 'storage'), '--runroot', join(dir, 'run')];
  const podman = async (args: string[]): Promise<string> => {
    const { stdout } = await run('podman', [...storage, ...args], { env, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  };

  await buildTestImage(dir, podman);

  const socketPath = join(dir, 'podman.sock');
  const startService = async (): Promise<ChildProcess> => {
    const service = spawn('podman', [...storage, 'system', 'service', '--time=0', `unix://${socketPath}`], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    live.add(service);
    let stderr = '';
    service.stderr?.on('data', (b: Buffer) => {
      stderr = (stderr + b.toString()).slice(-4000);
    });
    try {
      // A fresh storage on cores other engines' tests share has taken over 20 s to answer.
      await waitForVersion(socketPath, service, 60_000);
    } catch (err) {
      service.kill('SIGKILL');
      live.delete(service);
      throw new Error(`${(err as Error).message}\n${stderr}`);
    }
    return service;
  };
  const stopService = async (service: ChildProcess): Promise<void> => {
    if (service.exitCode === null && service.signalCode === null) {
      const exited = new Promise((r) => service.once('exit', r));
      service.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (service.exitCode === null && service.signalCode === null) service.kill('SIGKILL');
    }
    live.delete(service);
  };

  let service: ChildProcess;
  try {
    service = await startService();
  } catch (err) {
    // Nothing runs yet: leave no storage mount or directory behind.
    await run('umount', [join(dir, 'storage', 'overlay')]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  let stopped = false;
  return {
    dir,
    socketPath,
    uri: `unix://${socketPath}`,
    image: TEST_IMAGE,
    podman,
    async restartService() {
      await stopService(service);
      service = await startService();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await stopService(service);
      // Containers outlive the service (conmon holds them): remove them so no mount is left.
      await podman(['rm', '--all', '--force', '--time', '0']).catch(() => undefined);
      await podman(['rmi', '--all', '--force']).catch(() => undefined);
      // containers/storage keeps its overlay folder as a mount of its own.
      await run('umount', [join(dir, 'storage', 'overlay')]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** An image from an empty root holding a static busybox and a link per applet. */
async function buildTestImage(dir: string, podman: (args: string[]) => Promise<string>): Promise<void> {
  const busybox = which('busybox');
  if (!busybox) throw new Error('busybox is not installed');
  const root = join(dir, 'rootfs');
  await mkdir(join(root, 'bin'), { recursive: true });
  await mkdir(join(root, 'tmp'), { recursive: true });
  await copyFile(busybox, join(root, 'bin', 'busybox'));
  const applets = spawnSync(busybox, ['--list'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  for (const applet of applets) {
    if (applet !== 'busybox') await symlink('busybox', join(root, 'bin', applet)).catch(() => undefined);
  }
  const tar = join(dir, 'rootfs.tar');
  await run('tar', ['-C', root, '-cf', tar, '.']);
  await podman(['import', '--change', 'CMD ["/bin/sh"]', '--change', 'ENV PATH=/bin', tar, TEST_IMAGE]);
  await rm(root, { recursive: true, force: true });
  await rm(tar, { force: true });
}

/**
 * Binds that let a Node module script run in the busybox image: this machine's node at
 * /usr/bin/node, its shared libraries where ldd finds them, and the SDK packages at
 * /app/node_modules (a script mounted at /app/module.cjs finds them), all read-only.
 */
export async function nodeMounts(): Promise<string[]> {
  const node = await realpath(process.execPath);
  const libDirs = new Set<string>();
  for (const m of execFileSync('ldd', [node], { encoding: 'utf8' }).matchAll(/(\/\S+)\s+\(0x/g))
    libDirs.add(dirname(m[1]!));
  const nodeModules = await realpath(fileURLToPath(new URL('../../node_modules', import.meta.url)));
  return [
    `${node}:/usr/bin/node:ro`,
    ...[...libDirs].map((d) => `${d}:${d}:ro`),
    `${nodeModules}:/app/node_modules:ro`,
  ];
}
