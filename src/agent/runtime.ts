/**
 * What the edge agent asks of whatever runs modules: a container engine through the Docker
 * Engine API (Docker or Podman), or plain processes on machines without one. Every runtime keeps
 * the modules it runs marked as Strata's, so an agent restarted after a crash finds and adopts
 * them instead of starting them twice, and removes strays.
 */

/** One module as a runtime needs it, after the deployment was read and checked (manifest.ts). */
export interface ModuleSpec {
  /** The module's name in the deployment, also its module identity id. */
  name: string;
  /** `docker` (container engine) or `process` (a Strata extension: a command on this machine). */
  type: 'docker' | 'process';
  /** docker: the image reference, `$upstream` already resolved. */
  image?: string;
  /** docker: the createOptions object (the pieces createOptions01.. already joined). */
  createOptions?: Record<string, unknown>;
  /** process: the program and its arguments. */
  command?: string;
  args?: string[];
  /** process: working directory (default: the module's directory under the agent's data). */
  cwd?: string;
  /** Environment from the deployment, plus what the agent adds (IOTEDGE_*). */
  env: Record<string, string>;
  /** docker: pull when creating (`on-create`, the default) or only use a local image (`never`). */
  imagePullPolicy?: 'on-create' | 'never';
  /** docker: credentials for the image's registry, when the deployment names them. */
  registryAuth?: { username: string; password: string; serveraddress: string };
  /** A digest of everything above: a module whose spec changed is recreated. */
  specHash: string;
}

export type RuntimeStatus = 'running' | 'stopped' | 'failed' | 'unknown';

/** What a runtime knows about one module it runs (or ran). */
export interface ModuleState {
  name: string;
  runtimeStatus: RuntimeStatus;
  /** The last exit code, once the module has exited. */
  exitCode?: number;
  /** Epoch ms. */
  startedAt?: number;
  exitedAt?: number;
  /** The spec it was created from (ModuleSpec.specHash), as recorded with it. */
  specHash?: string;
  image?: string;
  /** Engine container id or process id, for logs and people. */
  id?: string;
  /**
   * The engine's health check of a running container (createOptions `Healthcheck` or the
   * image's HEALTHCHECK), when it has one. Process modules have none.
   */
  health?: ModuleHealth;
}

export type ModuleHealth = 'starting' | 'healthy' | 'unhealthy';

export interface LogOptions {
  /** Only the last N lines (default: all kept). */
  tail?: number;
  /** Only lines written at or after / before this time (epoch ms). See log-filter.ts for process modules. */
  since?: number;
  until?: number;
  /** Keep reading new lines until `signal` aborts. */
  follow?: boolean;
  signal?: AbortSignal;
}

export interface ModuleRuntime {
  readonly kind: 'docker' | 'process';
  /** Every module this runtime holds for this agent, running or not. */
  list(): Promise<ModuleState[]>;
  /** Pulls (per policy) and creates the module, not started. Replaces nothing: remove first. */
  create(spec: ModuleSpec): Promise<void>;
  start(name: string): Promise<void>;
  /** Stops gracefully (SIGTERM), forcefully after `timeoutMs` (default 10 s). */
  stop(name: string, timeoutMs?: number): Promise<void>;
  /** Stops if needed and forgets the module (container removed). */
  remove(name: string): Promise<void>;
  /** The module's output (stdout and stderr), line by line. */
  logs(name: string, opts?: LogOptions): AsyncIterable<string>;
  /**
   * Told when a module exits by itself (not when stopped); returns an unsubscribe function.
   * `exitCode` is undefined when the runtime cannot learn it: a process module adopted after an
   * agent restart is not this agent's child, so only its end is seen, not its exit status.
   */
  onExit(listener: (name: string, exitCode: number | undefined) => void): () => void;
  /** Told when a module's health check result changes (runtimes with health checks only; undefined: not said). */
  onHealth?(listener: (name: string, health: ModuleHealth | undefined) => void): () => void;
  close(): Promise<void>;
}
