import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';

/** A loopback address of its own (127.A.B.C, A/B/C in 2..250) so test files running in parallel never collide. */
export function randomLoopbackAddress(): string {
  return `127.${randomInt(2, 251)}.${randomInt(2, 251)}.${randomInt(2, 251)}`;
}

export interface Exec {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program without blocking the event loop (a TLS server in this process must keep answering). */
export function exec(
  file: string,
  args: string[],
  opts: { input?: string; cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<Exec> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 20_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

/**
 * `openssl s_client` as a strict TLS client: the handshake fails unless the server's chain verifies
 * against `caFile` and matches `host` (a name, or an IP address checked with -verify_ip).
 */
export function opensslConnect(o: {
  address: string;
  port: number;
  caFile: string;
  host: string;
  servername?: string;
}): Promise<Exec> {
  const isIp = /^[\d.]+$/.test(o.host) || o.host.includes(':');
  return exec(
    'openssl',
    [
      's_client',
      '-connect',
      `${o.address}:${o.port}`,
      '-servername',
      o.servername ?? (isIp ? 'localhost' : o.host),
      '-CAfile',
      o.caFile,
      '-verify_return_error',
      isIp ? '-verify_ip' : '-verify_hostname',
      o.host,
    ],
    { input: '', timeoutMs: 10_000 },
  );
}
