import { createHash } from 'node:crypto';
import { chmod, mkdir, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { childLog, wireText } from '../util/log.ts';
import { handleWorkloadRequest, type WorkloadModule } from './workload-routes.ts';

/**
 * The IoT Edge workload API the agent serves to its modules: what `ModuleClient.fromEnvironment`
 * calls to sign its SAS tokens and to fetch the CA it must trust. One listener per module, so the
 * caller is known by the socket it came on and a module can only ever sign with its own key.
 * Containers get their module's socket directory bind-mounted (the directory, not the socket:
 * an agent restarted after a crash makes a new socket, which a file mount would not show); process
 * modules may use the socket or a loopback port (the SDKs accept `http://` workload URIs too).
 */

const log = childLog('workload');

/** Longest path a unix socket may have (sun_path is 108 bytes with its terminating NUL). */
const MAX_SOCKET_PATH = 107;
/** The socket's name in its module's directory, as IoT Edge names it. */
export const SOCKET_NAME = 'workload.sock';
/** A sign request is a few hundred bytes; anything far larger is not one. */
const MAX_BODY_BYTES = 64 * 1024;

export type WorkloadTransport = 'unix' | 'http';

export interface WorkloadEndpoint {
  moduleId: string;
  /** The value of the module's IOTEDGE_WORKLOADURI on this machine (`unix:///...` or `http://127.0.0.1:port`). */
  uri: string;
  /** unix: the socket's path on this machine. */
  socketPath?: string;
  /** unix: the directory that holds only this module's socket, for a container's bind mount. */
  socketDir?: string;
}

export interface WorkloadApiOptions {
  /** Directory with one directory per module holding its `workload.sock`; created if missing. */
  socketDir: string;
  /** The gateway's trust bundle (PEM): the root CA(s) a module must trust to reach edgeHub. */
  trustBundlePem: string | (() => string);
}

interface Served {
  module: WorkloadModule;
  server: http.Server;
  endpoint: WorkloadEndpoint;
}

export class WorkloadApi {
  private readonly served = new Map<string, Served>();

  constructor(private readonly opts: WorkloadApiOptions) {}

  /** Starts serving `module` (or replaces what it serves: a new generation id or keys). */
  async serve(module: WorkloadModule, transport: WorkloadTransport = 'unix'): Promise<WorkloadEndpoint> {
    const current = this.served.get(module.moduleId);
    if (current && (transport === 'unix') === (current.endpoint.socketPath !== undefined)) {
      current.module = { ...module };
      return current.endpoint;
    }
    if (current) await this.stop(module.moduleId);

    const entry = { module: { ...module } } as Served;
    entry.server = http.createServer((req, res) => this.answer(entry, req, res));
    entry.server.on('clientError', (_err, socket) => socket.destroy());
    if (transport === 'unix') {
      const moduleDir = join(this.opts.socketDir, moduleDirName(this.opts.socketDir, module.moduleId));
      const socketPath = join(moduleDir, SOCKET_NAME);
      if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH)
        throw new Error(
          `workload socket path for module '${module.moduleId}' is ${Buffer.byteLength(socketPath)} bytes, over the ` +
            `${MAX_SOCKET_PATH} a unix socket allows: choose a shorter data directory`,
        );
      // Only the agent lists the top directory; each module's directory reaches it by a bind mount.
      await mkdir(this.opts.socketDir, { recursive: true, mode: 0o700 });
      await mkdir(moduleDir, { recursive: true, mode: 0o755 });
      await rm(socketPath, { force: true }); // left by an agent that was killed
      await listen(entry.server, { path: socketPath });
      // Any user inside the module's container (image USER) must be able to connect.
      await chmod(socketPath, 0o666);
      entry.endpoint = { moduleId: module.moduleId, uri: `unix://${socketPath}`, socketPath, socketDir: moduleDir };
    } else {
      await listen(entry.server, { host: '127.0.0.1', port: 0 });
      const { port } = entry.server.address() as AddressInfo;
      entry.endpoint = { moduleId: module.moduleId, uri: `http://127.0.0.1:${port}` };
    }
    this.served.set(module.moduleId, entry);
    log.debug({ moduleId: module.moduleId, uri: entry.endpoint.uri }, 'workload API serving module');
    return entry.endpoint;
  }

  endpoint(moduleId: string): WorkloadEndpoint | undefined {
    return this.served.get(moduleId)?.endpoint;
  }

  /** Stops serving a module (removed from the deployment); its socket file goes too. */
  async stop(moduleId: string): Promise<void> {
    const entry = this.served.get(moduleId);
    if (!entry) return;
    this.served.delete(moduleId);
    entry.server.closeAllConnections();
    await new Promise<void>((resolve) => entry.server.close(() => resolve()));
    if (entry.endpoint.socketPath) await rm(entry.endpoint.socketPath, { force: true });
  }

  async close(): Promise<void> {
    await Promise.all([...this.served.keys()].map((id) => this.stop(id)));
  }

  private answer(entry: Served, req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) tooLarge = true;
      else chunks.push(c);
    });
    req.on('error', () => res.destroy());
    req.on('end', () => {
      const out = tooLarge
        ? { status: 413, body: { message: `Request body over ${MAX_BODY_BYTES} bytes` } }
        : handleWorkloadRequest(entry.module, this.trustBundle(), {
            method: req.method ?? 'GET',
            url: req.url ?? '/',
            body: Buffer.concat(chunks),
          });
      if (out.status >= 400)
        log.warn(
          { moduleId: entry.module.moduleId, method: req.method, url: wireText(req.url), status: out.status },
          `workload API refused a request: ${out.body.message}`,
        );
      const body = JSON.stringify(out.body);
      res.writeHead(out.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  }

  private trustBundle(): string {
    return typeof this.opts.trustBundlePem === 'function' ? this.opts.trustBundlePem() : this.opts.trustBundlePem;
  }
}

/**
 * The module's directory name: its id where that is a safe, short path segment, else a digest
 * of it (module ids may be `..` or up to 128 characters, more than a socket path allows).
 */
export function moduleDirName(socketDir: string, moduleId: string): string {
  const fits = Buffer.byteLength(join(socketDir, moduleId, SOCKET_NAME)) <= MAX_SOCKET_PATH;
  if (fits && moduleId !== '.' && moduleId !== '..' && !moduleId.includes('/')) return moduleId;
  return `m-${createHash('sha256').update(moduleId).digest('hex').slice(0, 24)}`;
}

function listen(server: http.Server, at: { path: string } | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(at, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
