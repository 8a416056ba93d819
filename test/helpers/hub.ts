import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { randomInt } from 'node:crypto';
import { hubConnectionString, readHubState } from '../../src/hub/local.ts';

const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const SDK_RUNNER = fileURLToPath(new URL('../fixtures/service-sdk-runner.cjs', import.meta.url));

/** 127.A.B.C with A, B, C in 2..250: each test gets its own address, so parallel files never collide. */
export function randomLoopback(): string {
  return `127.${randomInt(2, 251)}.${randomInt(2, 251)}.${randomInt(2, 251)}`;
}

// A test that fails half-way must not leave hubs running.
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export interface HubProcess {
  dataDir: string;
  address: string;
  hostname: string;
  httpsPort: number;
  connectionString: string;
  caPath: string;
  caPem: string;
  proc: ChildProcess;
  /** stdout and stderr of the hub so far (for failure messages). */
  output(): string;
  /** SIGTERM and wait for a clean exit; removes the data directory if the helper made it. */
  stop(): Promise<void>;
  /** SIGKILL, as a power cut would; keeps the data directory. */
  kill9(): Promise<void>;
}

function waitForExit(proc: ChildProcess, ms: number): Promise<boolean> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * Starts the real `strata hub start` CLI in a child process on a random loopback address
 * (host name = that address, so the server certificate carries it as an IP SAN) and waits
 * until it has written its state file with the bound ports.
 */
export async function startHubProcess(
  o: {
    address?: string;
    httpsPort?: number;
    dataDir?: string;
    env?: Record<string, string>;
    nodeArgs?: string[];
    args?: string[];
  } = {},
): Promise<HubProcess> {
  const address = o.address ?? randomLoopback();
  const ownDir = o.dataDir === undefined;
  const dataDir = o.dataDir ?? (await mkdtemp(join(tmpdir(), 'strata-hub-')));
  const args = [
    STRATA_BIN,
    'hub',
    'start',
    '--data',
    dataDir,
    '--hostname',
    address,
    '--bind',
    address,
    '--https-port',
    String(o.httpsPort ?? 443),
    ...(o.args ?? []),
  ];
  const proc = spawn(process.execPath, [...(o.nodeArgs ?? []), ...args], {
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn', ...o.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(proc);
  proc.once('exit', () => live.delete(proc));
  let out = '';
  const keep = (chunk: Buffer) => {
    out = (out + chunk.toString('utf8')).slice(-64 * 1024);
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);

  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      if (ownDir) await rm(dataDir, { recursive: true, force: true });
      throw new Error(`strata hub start exited (${proc.exitCode ?? proc.signalCode}) before it was ready:\n${out}`);
    }
    const state = readHubState(dataDir);
    if (state && state.pid === proc.pid) break;
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      await waitForExit(proc, 5000);
      if (ownDir) await rm(dataDir, { recursive: true, force: true });
      throw new Error(`strata hub start was not ready within 30 s:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const state = readHubState(dataDir)!;
  const hub: HubProcess = {
    dataDir,
    address,
    hostname: state.hostname,
    httpsPort: state.ports.https,
    connectionString: hubConnectionString(dataDir),
    caPath: state.caPath,
    caPem: readFileSync(state.caPath, 'utf8'),
    proc,
    output: () => out,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        if (!(await waitForExit(proc, 10_000))) {
          proc.kill('SIGKILL');
          await waitForExit(proc, 5000);
        }
      }
      if (ownDir) await rm(dataDir, { recursive: true, force: true });
    },
    async kill9() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await waitForExit(proc, 5000);
      }
    },
  };
  return hub;
}

export interface SdkError {
  name: string;
  message: string;
  statusCode: number | null;
  body: string | null;
}

export type SdkResult<T = any> = { ok: true; value: T } | { ok: false; error: SdkError };

/**
 * The official azure-iothub Registry in a child process that trusts `caPath`
 * (NODE_EXTRA_CA_CERTS only works at start-up). `call` runs one Registry method with the
 * promise API; results come back as JSON.
 */
export async function startServiceSdk(caPath: string) {
  const proc = spawn(process.execPath, [SDK_RUNNER], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: caPath },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  live.add(proc);
  proc.once('exit', () => live.delete(proc));
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-16 * 1024)));
  let nextId = 1;
  const waiting = new Map<number, (r: SdkResult) => void>();
  createInterface({ input: proc.stdout! }).on('line', (line) => {
    let msg: { id: number } & SdkResult;
    try {
      msg = JSON.parse(line);
    } catch {
      return;
    }
    waiting.get(msg.id)?.(msg);
    waiting.delete(msg.id);
  });
  proc.once('exit', (code) => {
    for (const resolve of waiting.values())
      resolve({
        ok: false,
        error: { name: 'RunnerExited', message: `runner exited (${code}): ${stderr}`, statusCode: null, body: null },
      });
    waiting.clear();
  });
  const send = (req: Record<string, unknown>): Promise<SdkResult> =>
    new Promise((resolve) => {
      const id = nextId++;
      waiting.set(id, resolve);
      proc.stdin!.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  /** Unwraps a success or throws with the SDK's error. */
  const must = async <T>(p: Promise<SdkResult<T>>): Promise<T> => {
    const r = await p;
    if (!r.ok)
      throw new Error(
        `${r.error.name}: ${r.error.message} (${r.error.statusCode ?? 'no status'}) ${r.error.body ?? ''}`,
      );
    return r.value;
  };
  return {
    open: (name: string, auth: { connectionString: string } | { sharedAccessSignature: string }) =>
      must(send({ op: 'open', name, ...auth })),
    /** Calls `Registry[method](...args)`; value is `{ statusCode, headers, body }`. */
    call: (registry: string, method: string, ...args: unknown[]) =>
      send({ op: 'call', registry, method, args }) as Promise<
        SdkResult<{ statusCode: number; headers: Record<string, string>; body: any }>
      >,
    query: (registry: string, sql: string, pageSize?: number) =>
      send({ op: 'query', registry, sql, pageSize }) as Promise<SdkResult<{ pages: any[][] }>>,
    must,
    async close() {
      proc.stdin!.end();
      if (!(await waitForExit(proc, 5000))) proc.kill('SIGKILL');
    },
  };
}

export type ServiceSdk = Awaited<ReturnType<typeof startServiceSdk>>;
