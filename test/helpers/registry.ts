import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A local image registry for tests: Debian's `docker-registry` (the CNCF Distribution registry)
 * on a loopback port, plain HTTP, with basic auth (htpasswd, bcrypt), so pulls with registry
 * credentials are tested against a real registry without the internet.
 */

const run = promisify(execFile);

export interface LocalRegistry {
  /** host:port, the prefix of image references in it. */
  host: string;
  username: string;
  password: string;
  /** Access-log lines of requests under /v2/ so far (what reached the registry). */
  requests(): string[];
  /** Where the registry's filesystem storage keeps a blob's bytes ("sha256:..."): to damage it on purpose. */
  blobFile(digest: string): string;
  stop(): Promise<void>;
}

/** Why a registry cannot run here, or undefined when it can. */
export function registryMissing(): string | undefined {
  if (spawnSync('sh', ['-c', 'command -v docker-registry']).status !== 0) {
    return 'docker-registry is not installed (apt-get install docker-registry)';
  }
  if (spawnSync('python3', ['-c', 'import crypt']).status !== 0) return 'python3 with crypt is needed for htpasswd';
  return undefined;
}

/** A loopback port free now (the registry takes it a moment later). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

/** A bcrypt htpasswd line, as the registry requires; python's crypt (libxcrypt) makes it. */
async function htpasswdLine(username: string, password: string): Promise<string> {
  const { stdout } = await run('python3', [
    '-c',
    'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))',
    password,
  ]);
  return `${username}:${stdout.trim()}\n`;
}

export async function startRegistry(port: number, address = '127.0.0.1'): Promise<LocalRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-registry-'));
  const username = 'strata';
  const password = randomBytes(12).toString('hex');
  await mkdir(join(dir, 'data'));
  await writeFile(join(dir, 'htpasswd'), await htpasswdLine(username, password));
  const host = `${address}:${port}`;
  await writeFile(
    join(dir, 'config.yml'),
    [
      'version: 0.1',
      'log:',
      '  level: error',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'data')}`,
      'http:',
      `  addr: ${host}`,
      'auth:',
      '  htpasswd:',
      '    realm: strata-test',
      `    path: ${join(dir, 'htpasswd')}`,
      '',
    ].join('\n'),
  );
  const proc: ChildProcess = spawn('docker-registry', ['serve', join(dir, 'config.yml')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  const requests: string[] = [];
  let partial = '';
  // The access log (one line per request) goes to stdout.
  proc.stdout?.on('data', (b: Buffer) => {
    const lines = (partial + b.toString()).split('\n');
    partial = lines.pop()!;
    for (const l of lines) if (/"(GET|HEAD|POST|PUT|PATCH|DELETE) \/v2\//.test(l)) requests.push(l);
  });
  proc.stderr?.on('data', (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  const deadline = Date.now() + 10_000;
  // /v2/ answers 401 without credentials once the registry listens.
  for (;;) {
    const status = await new Promise<number>((resolve) => {
      const req = http.get({ host: address, port, path: '/v2/', timeout: 1000 }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => resolve(0));
      req.on('timeout', () => {
        req.destroy();
        resolve(0);
      });
    });
    if (status === 401) break;
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
      throw new Error(`docker-registry did not start (last /v2/ status ${status})\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    host,
    username,
    password,
    requests: () => [...requests],
    blobFile(digest) {
      const hex = digest.replace(/^sha256:/, '');
      return join(dir, 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The `[registry]` section of a top layer's config.toml that pulls from `r` with its credentials. */
export function registrySection(r: LocalRegistry): string {
  return [
    '',
    '[registry]',
    `upstream = "http://${r.host}"`,
    `username = "${r.username}"`,
    `password = "${r.password}"`,
    '',
  ].join('\n');
}
