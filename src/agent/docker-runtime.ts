import type { Readable } from 'node:stream';
import Docker from 'dockerode';
import type { Logger } from 'pino';
import { childLog } from '../util/log.ts';
import { LineSplitter, LogLines } from './docker-stream.ts';
import type { LogOptions, ModuleHealth, ModuleRuntime, ModuleSpec, ModuleState, RuntimeStatus } from './runtime.ts';

/**
 * Modules as containers, over the Docker Engine API: Docker or Podman behind the same code.
 * Every container carries labels naming the agent (the edge device), the module and the spec it
 * was made from; the agent finds its containers by those labels alone, so one restarted after a
 * crash adopts what runs instead of starting it twice, and sees strays it should remove.
 */

export const LABEL_AGENT = 'net.strata.agent';
export const LABEL_MODULE = 'net.strata.module';
export const LABEL_SPEC = 'net.strata.spec';

export interface DockerRuntimeOptions {
  /** `[moby_runtime] uri`: `unix:///path/to.sock` or `tcp://host:port`. */
  uri: string;
  /** The edge device this agent acts for: its containers carry it in a label. */
  agentId: string;
  /**
   * The container name for a module. The default is the module's name, as IoT Edge names them;
   * agents that share one engine (a hierarchy on one machine) give each its own prefix.
   */
  containerName?: (module: string) => string;
  log?: Logger;
}

/** A failure of one module's operation, naming the module and what the engine said. */
export class ModuleRuntimeError extends Error {
  constructor(
    readonly module: string,
    readonly operation: string,
    detail: string,
  ) {
    super(`module ${module}: ${operation} failed: ${detail}`);
    this.name = 'ModuleRuntimeError';
  }
}

/** Connection settings for dockerode from a `[moby_runtime] uri`. */
export function engineConnection(uri: string): Docker.DockerOptions {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new Error(`[moby_runtime] uri: "${uri}" is not a URI (expected unix:///path.sock or tcp://host:port)`);
  }
  if (url.protocol === 'unix:') {
    const socketPath = decodeURIComponent(url.pathname);
    if (!socketPath || socketPath === '/') throw new Error(`[moby_runtime] uri: "${uri}" names no socket path`);
    return { socketPath };
  }
  if (url.protocol === 'tcp:' || url.protocol === 'http:') {
    if (!url.hostname || !url.port) throw new Error(`[moby_runtime] uri: "${uri}" needs a host and a port`);
    return { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port), protocol: 'http' };
  }
  throw new Error(`[moby_runtime] uri: scheme "${url.protocol}" is not supported (use unix:// or tcp://)`);
}

/** What the engine said, from a dockerode error (its JSON body's message when there is one). */
function engineSays(err: unknown): string {
  const e = err as { json?: { message?: string } | null; reason?: string; message?: string; statusCode?: number };
  const message = e?.json?.message ?? e?.message ?? String(err);
  return e?.statusCode ? `${message} (HTTP ${e.statusCode})` : message;
}

const statusCode = (err: unknown): number | undefined => (err as { statusCode?: number })?.statusCode;

/** Docker's zero time: a container never started or never exited. */
function engineTime(value: string | undefined): number | undefined {
  if (!value || value.startsWith('0001-01-01')) return undefined;
  const t = Date.parse(value);
  return Number.isNaN(t) ? undefined : t;
}

/**
 * The engine's health check result of a running container, when it has a check. Docker reports
 * it as State.Health; Podman's compatible API as State.Health, older Podman as State.Healthcheck.
 */
function healthOf(state: Docker.ContainerInspectInfo['State']): ModuleHealth | undefined {
  if (!(state.Running || state.Restarting)) return undefined;
  const s = state as { Health?: { Status?: string }; Healthcheck?: { Status?: string } };
  return asHealth(s.Health?.Status ?? s.Healthcheck?.Status);
}

function asHealth(value: string | undefined): ModuleHealth | undefined {
  return value === 'starting' || value === 'healthy' || value === 'unhealthy' ? value : undefined;
}

/** The engine's state as IoT Edge reports it: a non-zero exit is a failure. */
function runtimeStatus(state: Docker.ContainerInspectInfo['State']): RuntimeStatus {
  if (state.Running || state.Restarting) return 'running';
  switch (state.Status) {
    case 'created':
    case 'paused':
      return 'stopped';
    case 'exited':
      return state.ExitCode === 0 ? 'stopped' : 'failed';
    case 'dead':
      return 'failed';
    default:
      return 'unknown';
  }
}

/**
 * createOptions as IoT Edge applies them: the deployment's env joins createOptions' Env (the
 * deployment wins for a name in both), the labels join createOptions' Labels (ours win), and
 * everything else, HostConfig included, goes to the engine as given.
 */
export function containerConfig(spec: ModuleSpec, labels: Record<string, string>): Docker.ContainerCreateOptions {
  const options = { ...(spec.createOptions ?? {}) } as Record<string, unknown>;
  delete options.name;
  const env = new Map<string, string>();
  for (const entry of Array.isArray(options.Env) ? (options.Env as unknown[]) : []) {
    if (typeof entry !== 'string') continue;
    const eq = entry.indexOf('=');
    env.set(eq < 0 ? entry : entry.slice(0, eq), entry);
  }
  for (const [key, value] of Object.entries(spec.env)) env.set(key, `${key}=${value}`);
  const userLabels =
    options.Labels && typeof options.Labels === 'object' ? (options.Labels as Record<string, string>) : {};
  return {
    ...options,
    Image: spec.image,
    Env: [...env.values()],
    Labels: { ...userLabels, ...labels },
  } as Docker.ContainerCreateOptions;
}

/**
 * Reads a pull's progress stream to its end: the engine reports a failed pull inside it (an
 * `error` line, not always newline-terminated), not in the HTTP status.
 */
async function pullFailure(stream: Readable): Promise<string | undefined> {
  const split = new LineSplitter();
  let failure: string | undefined;
  const take = (line: string): void => {
    if (!line.trim()) return;
    try {
      const progress = JSON.parse(line) as { error?: string; errorDetail?: { message?: string } };
      failure = progress.errorDetail?.message ?? progress.error ?? failure;
    } catch {
      // not JSON: progress text we do not need
    }
  };
  for await (const chunk of stream) for (const line of split.push(chunk as Buffer)) take(line);
  for (const line of split.end()) take(line);
  return failure;
}

interface EngineEvent {
  Type?: string;
  Action?: string;
  status?: string;
  id?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
  time?: number;
  timeNano?: number;
}

export class DockerRuntime implements ModuleRuntime {
  readonly kind = 'docker' as const;
  private readonly docker: Docker;
  private readonly agentId: string;
  private readonly uri: string;
  private readonly nameOf: (module: string) => string;
  private readonly log: Logger;
  private readonly exitListeners = new Set<(name: string, exitCode: number) => void>();
  private readonly healthListeners = new Set<(name: string, health: ModuleHealth | undefined) => void>();
  private readonly healthTimers = new Set<NodeJS.Timeout>();
  /** Containers we are stopping or removing: their die event is not an exit "by itself". */
  private readonly stopping = new Set<string>();
  private events: Readable | undefined;
  private eventsRetry: NodeJS.Timeout | undefined;
  private lastEventSecs: number | undefined;
  /** Events of the last second seen, so a stream reopened `since` then repeats none. */
  private seenInLastSec = new Set<string>();
  private closed = false;

  constructor(opts: DockerRuntimeOptions) {
    this.docker = new Docker(engineConnection(opts.uri));
    this.agentId = opts.agentId;
    this.uri = opts.uri;
    this.nameOf = opts.containerName ?? ((m) => m);
    this.log = opts.log ?? childLog('agent.docker');
  }

  /** The engine's version, to check that it answers. */
  async version(): Promise<{ version: string; apiVersion: string }> {
    try {
      const v = await this.docker.version();
      return { version: v.Version, apiVersion: v.ApiVersion };
    } catch (err) {
      throw new Error(`container engine at ${this.uri} did not answer: ${engineSays(err)}`);
    }
  }

  async list(): Promise<ModuleState[]> {
    const found = await this.docker
      .listContainers({ all: true, filters: JSON.stringify({ label: [`${LABEL_AGENT}=${this.agentId}`] }) })
      .catch((err: unknown) => {
        throw new Error(`container engine at ${this.uri}: listing containers failed: ${engineSays(err)}`);
      });
    const states = await Promise.all(
      found.map(async (c) => {
        try {
          return this.stateOf(await this.docker.getContainer(c.Id).inspect());
        } catch (err) {
          if (statusCode(err) === 404) return undefined; // removed between the list and now
          throw err;
        }
      }),
    );
    return states.filter((s): s is ModuleState => s !== undefined);
  }

  private stateOf(info: Docker.ContainerInspectInfo): ModuleState {
    const labels = info.Config.Labels ?? {};
    const running = info.State.Running || info.State.Restarting;
    const exited = !running && engineTime(info.State.FinishedAt) !== undefined;
    return {
      name: labels[LABEL_MODULE] ?? info.Name.replace(/^\//, ''),
      runtimeStatus: runtimeStatus(info.State),
      exitCode: exited ? info.State.ExitCode : undefined,
      startedAt: engineTime(info.State.StartedAt),
      exitedAt: exited ? engineTime(info.State.FinishedAt) : undefined,
      specHash: labels[LABEL_SPEC],
      image: info.Config.Image,
      id: info.Id,
      ...(healthOf(info.State) ? { health: healthOf(info.State) } : {}),
    };
  }

  /** The container of module `name`, found by our labels (not by its name). */
  private async find(name: string): Promise<Docker.ContainerInfo | undefined> {
    return (await this.findAll(name))[0];
  }

  /** Every container labelled as module `name`: more than one only after a crash mid-update. */
  private async findAll(name: string): Promise<Docker.ContainerInfo[]> {
    return this.docker.listContainers({
      all: true,
      filters: JSON.stringify({ label: [`${LABEL_AGENT}=${this.agentId}`, `${LABEL_MODULE}=${name}`] }),
    });
  }

  private async container(name: string, operation: string): Promise<Docker.Container> {
    const found = await this.find(name).catch((err: unknown) => {
      throw new ModuleRuntimeError(name, operation, engineSays(err));
    });
    if (!found) throw new ModuleRuntimeError(name, operation, 'no container of this module on the engine');
    return this.docker.getContainer(found.Id);
  }

  async create(spec: ModuleSpec): Promise<void> {
    if (spec.type !== 'docker') throw new ModuleRuntimeError(spec.name, 'create', `type "${spec.type}" is not docker`);
    if (!spec.image) throw new ModuleRuntimeError(spec.name, 'create', 'settings.image is missing');
    await this.ensureImage(spec, spec.image);
    const config = containerConfig(spec, {
      [LABEL_AGENT]: this.agentId,
      [LABEL_MODULE]: spec.name,
      [LABEL_SPEC]: spec.specHash,
    });
    try {
      await this.docker.createContainer({ ...config, name: this.nameOf(spec.name) });
    } catch (err) {
      throw new ModuleRuntimeError(spec.name, 'create', engineSays(err));
    }
    this.log.info({ module: spec.name, image: spec.image }, 'container created');
  }

  /** imagePullPolicy: `on-create` pulls (with the deployment's credentials), `never` needs it here. */
  private async ensureImage(spec: ModuleSpec, image: string): Promise<void> {
    if (spec.imagePullPolicy === 'never') {
      try {
        await this.docker.getImage(image).inspect();
      } catch (err) {
        const detail =
          statusCode(err) === 404
            ? `image ${image} is not on this machine and imagePullPolicy is never`
            : `image ${image}: ${engineSays(err)}`;
        throw new ModuleRuntimeError(spec.name, 'create', detail);
      }
      return;
    }
    try {
      const stream = (await this.docker.pull(
        image,
        spec.registryAuth ? { authconfig: spec.registryAuth } : {},
      )) as Readable;
      const failure = await pullFailure(stream);
      if (failure) throw new Error(failure);
    } catch (err) {
      throw new ModuleRuntimeError(spec.name, 'create', `pulling image ${image}: ${engineSays(err)}`);
    }
  }

  async start(name: string): Promise<void> {
    const c = await this.container(name, 'start');
    this.stopping.delete(c.id);
    try {
      await c.start();
    } catch (err) {
      if (statusCode(err) === 304) return; // already running
      throw new ModuleRuntimeError(name, 'start', engineSays(err));
    }
  }

  async stop(name: string, timeoutMs = 10_000): Promise<void> {
    const c = await this.container(name, 'stop');
    this.stopping.add(c.id);
    try {
      await c.stop({ t: Math.max(0, Math.ceil(timeoutMs / 1000)) });
    } catch (err) {
      if (statusCode(err) === 304) {
        this.stopping.delete(c.id); // was not running: no die event will come
        return;
      }
      this.stopping.delete(c.id);
      throw new ModuleRuntimeError(name, 'stop', engineSays(err));
    }
  }

  async remove(name: string): Promise<void> {
    const found = await this.findAll(name).catch((err: unknown) => {
      throw new ModuleRuntimeError(name, 'remove', engineSays(err));
    });
    for (const c of found) {
      const container = this.docker.getContainer(c.Id);
      try {
        if (c.State === 'running') {
          this.stopping.add(c.Id);
          // Podman's forced remove first waits the stop timeout; a graceful end is stop()'s job.
          await container.kill({ signal: 'SIGKILL' }).catch((err: unknown) => {
            if (statusCode(err) !== 409 && statusCode(err) !== 404) throw err;
          });
        }
        await container.remove({ force: true });
      } catch (err) {
        this.stopping.delete(c.Id);
        if (statusCode(err) !== 404) throw new ModuleRuntimeError(name, 'remove', engineSays(err));
      }
    }
  }

  async *logs(name: string, opts: LogOptions = {}): AsyncIterable<string> {
    const c = await this.container(name, 'logs');
    let tty = false;
    try {
      tty = (await c.inspect()).Config.Tty === true;
    } catch (err) {
      throw new ModuleRuntimeError(name, 'logs', engineSays(err));
    }
    const lines = new LogLines(!tty);
    const base = {
      stdout: true,
      stderr: true,
      ...(opts.tail !== undefined ? { tail: opts.tail } : {}),
      // The engine takes unix seconds and knows when each line was written.
      ...(opts.since !== undefined ? { since: Math.floor(opts.since / 1000) } : {}),
      ...(opts.until !== undefined ? { until: Math.ceil(opts.until / 1000) } : {}),
    };
    if (!opts.follow) {
      let out: Buffer;
      try {
        out = await c.logs({ ...base, follow: false });
      } catch (err) {
        throw new ModuleRuntimeError(name, 'logs', engineSays(err));
      }
      yield* lines.push(Buffer.from(out));
      yield* lines.end();
      return;
    }
    if (opts.signal?.aborted) return;
    let stream: Readable;
    try {
      stream = (await c.logs({ ...base, follow: true })) as Readable;
    } catch (err) {
      throw new ModuleRuntimeError(name, 'logs', engineSays(err));
    }
    const abort = (): void => {
      stream.destroy();
    };
    opts.signal?.addEventListener('abort', abort, { once: true });
    try {
      for await (const chunk of stream) yield* lines.push(chunk as Buffer);
      yield* lines.end();
    } catch (err) {
      if (!opts.signal?.aborted) throw new ModuleRuntimeError(name, 'logs', engineSays(err));
    } finally {
      opts.signal?.removeEventListener('abort', abort);
      stream.destroy();
    }
  }

  /** Health check results, from the same event stream (Docker: `health_status: unhealthy`; Podman: `health_status`). */
  onHealth(listener: (name: string, health: ModuleHealth | undefined) => void): () => void {
    this.healthListeners.add(listener);
    if (!this.events && !this.eventsRetry) this.watchEvents();
    return () => {
      this.healthListeners.delete(listener);
    };
  }

  private notifyHealth(module: string, health: ModuleHealth | undefined): void {
    if (this.closed) return;
    for (const listener of [...this.healthListeners]) {
      try {
        listener(module, health);
      } catch (err) {
        this.log.error({ err, module }, 'health listener failed');
      }
    }
  }

  onExit(listener: (name: string, exitCode: number) => void): () => void {
    this.exitListeners.add(listener);
    if (!this.events && !this.eventsRetry) this.watchEvents();
    return () => {
      this.exitListeners.delete(listener);
    };
  }

  /** The engine's event stream, our containers only; reopened (from where it left) if it ends. */
  private watchEvents(): void {
    if (this.closed) return;
    this.eventsRetry = undefined;
    const since = this.lastEventSecs;
    this.docker
      .getEvents({
        ...(since !== undefined ? { since } : {}),
        // Podman 4 ignores an `event` filter, so die events are picked out here.
        filters: JSON.stringify({ type: ['container'], label: [`${LABEL_AGENT}=${this.agentId}`] }),
      })
      .then((s) => {
        const stream = s as Readable;
        if (this.closed) {
          stream.destroy();
          return;
        }
        this.events = stream;
        // From now on nothing is missed: a reopened stream starts here even if no event came.
        this.lastEventSecs ??= Math.floor(Date.now() / 1000);
        const split = new LineSplitter();
        stream.on('data', (chunk: Buffer) => {
          for (const line of split.push(chunk)) this.onEventLine(line);
        });
        const reopen = (): void => {
          if (this.events !== stream) return;
          this.events = undefined;
          this.retryEvents();
        };
        stream.on('end', reopen);
        stream.on('close', reopen);
        stream.on('error', (err) => {
          this.log.warn({ err: engineSays(err) }, 'engine event stream failed');
          reopen();
        });
      })
      .catch((err: unknown) => {
        this.log.warn({ err: engineSays(err) }, 'engine event stream unavailable');
        this.retryEvents();
      });
  }

  private retryEvents(): void {
    if (this.closed || this.eventsRetry) return;
    this.eventsRetry = setTimeout(() => this.watchEvents(), 1000);
    this.eventsRetry.unref();
  }

  private onEventLine(line: string): void {
    if (!line.trim()) return;
    let ev: EngineEvent;
    try {
      ev = JSON.parse(line) as EngineEvent;
    } catch {
      return;
    }
    if (typeof ev.time === 'number') {
      if (this.lastEventSecs !== undefined && ev.time < this.lastEventSecs) return;
      if (ev.time !== this.lastEventSecs) this.seenInLastSec = new Set();
      this.lastEventSecs = ev.time;
      const key = `${ev.Actor?.ID ?? ev.id}:${ev.Action ?? ev.status}:${ev.timeNano ?? ''}`;
      if (this.seenInLastSec.has(key)) return;
      this.seenInLastSec.add(key);
    }
    const action = ev.Action ?? ev.status ?? '';
    const attrs = ev.Actor?.Attributes ?? {};
    if (attrs[LABEL_AGENT] !== this.agentId) return;
    if (action.startsWith('health_status')) {
      const module = attrs[LABEL_MODULE];
      const health = asHealth(action.split(': ')[1] ?? attrs.health_status ?? attrs.healthStatus);
      if (!module) return;
      this.notifyHealth(module, health);
      // Podman sends the event as the check starts, before its result is recorded: say it again.
      const later = setTimeout(() => {
        this.healthTimers.delete(later);
        this.notifyHealth(module, undefined);
      }, 1000);
      later.unref();
      this.healthTimers.add(later);
      return;
    }
    if (action !== 'die') return;
    const id = ev.Actor?.ID ?? ev.id ?? '';
    if (this.stopping.delete(id)) return; // we stopped it
    const module = attrs[LABEL_MODULE];
    if (!module) return;
    const exitCode = Number(attrs.exitCode ?? attrs.containerExitCode ?? -1);
    for (const listener of [...this.exitListeners]) {
      try {
        listener(module, Number.isFinite(exitCode) ? exitCode : -1);
      } catch (err) {
        this.log.error({ err, module }, 'exit listener failed');
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.eventsRetry) clearTimeout(this.eventsRetry);
    this.eventsRetry = undefined;
    this.events?.destroy();
    this.events = undefined;
    this.exitListeners.clear();
    this.healthListeners.clear();
    for (const t of this.healthTimers) clearTimeout(t);
    this.healthTimers.clear();
  }
}
