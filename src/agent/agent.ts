import { arch, platform, release } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection } from '../model/twin.ts';
import { childLog } from '../util/log.ts';
import { answerAgentMethod } from './agent-methods.ts';
import { readAgentState, writeAgentState } from './agent-state.ts';
import {
  AgentManifestError,
  type DesiredModule,
  type ModuleProblem,
  type ReadResult,
  namesParentRegistry,
  readAgentDesired,
  specHashOf,
} from './manifest.ts';
import { type BlobUploader, UploadTasks } from './log-upload.ts';
import { withWorkload } from './module-env.ts';
import { type PlanAction, planActions } from './plan.ts';
import type { AgentSettings, AgentTwinPort, ModuleIdentities, ModuleIdentity, ParentRegistryLogin } from './ports.ts';
import { buildAgentReported, type ModuleObservation, reportedPatch } from './reported.ts';
import {
  DEFAULT_RESTART_SETTINGS,
  decideRestart,
  type ModuleRunState,
  type RestartRecord,
  type RestartSettings,
  recordRestart,
  resetIfHealthy,
} from './restart-policy.ts';
import type { LogOptions, ModuleRuntime, ModuleSpec, ModuleState } from './runtime.ts';
import type { WorkloadApi } from './workload-api.ts';

/**
 * The edge agent's loop: it reads the `$edgeAgent` desired properties, and on each new version,
 * each module exit and a periodic tick it plans (plan.ts), acts in order, restarts exited
 * modules by their policy and back-off (restart-policy.ts), and reports the outcome in the
 * `$edgeAgent` reported properties (reported.ts). One reconcile runs at a time; kicks that come
 * while one runs fold into a single next one, which reads the newest desired properties.
 * Modules outlive the agent: a new agent lists them from the runtimes and adopts them.
 */

type Json = Record<string, unknown>;

export interface EdgeAgentOptions {
  settings: AgentSettings;
  twin: AgentTwinPort;
  identities: ModuleIdentities;
  /** The process runtime always; a container engine when the device has one. */
  runtimes: { process: ModuleRuntime; docker?: ModuleRuntime };
  workload: WorkloadApi;
  /** Sign-in for images from the parent's registry API; without it such pulls go unauthenticated. */
  parentRegistryLogin?: ParentRegistryLogin;
  /** Where `UploadModuleLogs` sends logs (log-upload.ts); without it the method answers 501. */
  uploadBlob?: BlobUploader;
  restart?: RestartSettings;
  /** How often the agent reconciles without being asked (catches what no event told). Default 15 s. */
  tickMs?: number;
  log?: Logger;
}

/** One module as `strata edge list` shows it. */
export interface AgentModuleView {
  name: string;
  type: 'docker' | 'process';
  runtimeStatus: ModuleRunState;
  statusDescription: string;
  /** The image, or the command of a process module. */
  image: string;
  exitCode?: number;
  restartCount: number;
}

interface Current {
  version: number;
  read?: ReadResult;
  manifestError?: AgentManifestError;
}

export class EdgeAgent {
  private readonly log: Logger;
  private readonly restartSettings: RestartSettings;
  private readonly statePath: string;
  private desired?: TwinCollection;
  private restarts = new Map<string, RestartRecord>();
  private readonly agentStopped = new Set<string>();
  private readonly ids = new Map<string, ModuleIdentity>();
  /** The last report the hub accepted (the base of the next merge patch). */
  private lastReported?: Json;
  private reportPending = true;
  private lastSavedState = '';
  private chain: Promise<void> = Promise.resolve();
  private queued = false;
  private closed = false;
  private tick?: NodeJS.Timeout;
  private restartTimer?: NodeJS.Timeout;
  private unsubscribe: Array<() => void> = [];
  private readonly startedAt = Date.now();
  /** The deployment as last reconciled: what `list`, logs and methods go by. */
  private current: Current = { version: 0 };
  private reconciles = 0;
  /** The desired version whose stray module identities were removed. */
  private identitySweepVersion?: number;
  /** `UploadModuleLogs` tasks and where they go (agent-methods.ts reads it). */
  readonly logUpload?: { tasks: UploadTasks; upload: BlobUploader; hub: string; device: string };

  constructor(private readonly o: EdgeAgentOptions) {
    this.log = o.log ?? childLog('agent');
    if (o.uploadBlob)
      this.logUpload = {
        tasks: new UploadTasks(),
        upload: o.uploadBlob,
        hub: o.settings.iothubHostName,
        device: o.settings.deviceId,
      };
    this.restartSettings = o.restart ?? DEFAULT_RESTART_SETTINGS;
    this.statePath = join(o.settings.dataDir, 'agent.json');
  }

  /** Starts with the deployment kept on disk, then follows the twin. Returns at once. */
  start(): void {
    const kept = readAgentState(this.statePath);
    this.desired = kept.desired;
    this.restarts = new Map(Object.entries(kept.restarts));
    for (const n of kept.agentStopped) this.agentStopped.add(n);
    for (const rt of this.runtimes()) {
      this.unsubscribe.push(
        rt.onExit((name, exitCode) => {
          this.log.info({ module: name, exitCode }, 'module exited');
          this.kick();
        }),
      );
      const off = rt.onHealth?.((name, health) => {
        this.log.info({ module: name, health }, 'module health changed');
        this.kick();
      });
      if (off) this.unsubscribe.push(off);
    }
    this.o.twin.onMethod((req) => this.onMethod(req));
    // A patch or a confirmed subscription: read the whole twin (a missed patch is caught up too).
    this.o.twin.onDesired(
      () => this.refresh(),
      () => this.refresh(),
    );
    this.kick();
    this.refresh();
    this.tick = setInterval(() => this.kick(), this.o.tickMs ?? 15_000);
    this.tick.unref();
  }

  /** Resolves when no reconcile is running or queued. */
  async idle(): Promise<void> {
    let seen: Promise<void>;
    do {
      seen = this.chain;
      await seen;
    } while (seen !== this.chain);
  }

  /** How many reconciles have run (for tests and the summary). */
  get reconcileCount(): number {
    return this.reconciles;
  }

  /** Stops following the twin and the runtimes. Modules keep running for the next agent. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.tick);
    clearTimeout(this.restartTimer);
    for (const u of this.unsubscribe.splice(0)) u();
    await this.chain;
  }

  // ---- what people and methods ask --------------------------------------------------------

  async moduleViews(): Promise<AgentModuleView[]> {
    const now = Date.now();
    const modules = this.current.read?.deployment.modules ?? [];
    const states = await this.listAll();
    const out: AgentModuleView[] = [];
    for (const m of modules) {
      const s = states.get(m.name)?.state;
      const d = s
        ? this.decide(m, s, now)
        : { runtimeStatus: 'unknown' as const, statusDescription: this.problemText(m.name) ?? 'not created yet' };
      out.push({
        name: m.name,
        type: m.type,
        runtimeStatus: d.runtimeStatus,
        statusDescription: d.statusDescription,
        image:
          m.type === 'docker' ? (m.settings.image ?? '') : [m.settings.command, ...(m.settings.args ?? [])].join(' '),
        exitCode: s?.exitCode,
        restartCount: this.record(m.name).restartCount,
      });
    }
    for (const [name, { state }] of states) {
      if (modules.some((m) => m.name === name)) continue;
      out.push({
        name,
        type: state.image ? 'docker' : 'process',
        runtimeStatus: state.runtimeStatus,
        statusDescription: this.problemText(name) ?? 'not in the deployment',
        image: state.image ?? '',
        exitCode: state.exitCode,
        restartCount: this.record(name).restartCount,
      });
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  /** The module's output; throws naming the module when this agent runs no such module. */
  async logs(name: string, opts: LogOptions = {}): Promise<AsyncIterable<string>> {
    const held = (await this.listAll()).get(name);
    if (!held) throw new UnknownModuleError(name);
    return held.runtime.logs(name, opts);
  }

  /** Stops and starts a module (RestartModule, `strata edge restart`); not counted as a restart by policy. */
  restartModule(name: string): Promise<void> {
    return this.exclusive(async () => {
      const held = (await this.listAll()).get(name);
      const m = this.current.read?.deployment.modules.find((x) => x.name === name);
      if (!held || !m) throw new UnknownModuleError(name);
      this.log.info({ module: name }, 'restarting module on request');
      await held.runtime.stop(name);
      if (m.status === 'running') {
        await held.runtime.start(name);
        this.agentStopped.delete(name);
      }
      this.reportPending = true;
    }).finally(() => this.kick());
  }

  /** Module names, for methods that match them by pattern. */
  moduleNames(): string[] {
    return (this.current.read?.deployment.modules ?? []).map((m) => m.name);
  }

  // ---- the twin ---------------------------------------------------------------------------

  private refresh(): void {
    if (this.closed) return;
    this.o.twin.twinGet().then(
      (twin) => {
        if (this.lastReported === undefined) this.lastReported = ownProperties(twin.reported);
        const desired = twin.desired;
        if (versionOf(desired) !== versionOf(this.desired) || this.desired === undefined) {
          this.log.info({ version: versionOf(desired) }, 'new $edgeAgent desired properties');
          this.desired = desired;
        }
        this.kick();
      },
      (err: unknown) =>
        this.log.warn(
          { err: (err as Error).message },
          'could not read the $edgeAgent twin from upstream; running the deployment known so far',
        ),
    );
  }

  private onMethod(req: MethodRequest): void {
    answerAgentMethod(this, req).then(
      (r) => this.o.twin.methodResponse(req.requestId, r.status, Buffer.from(JSON.stringify(r.payload))),
      (err: unknown) =>
        this.o.twin.methodResponse(
          req.requestId,
          500,
          Buffer.from(JSON.stringify({ message: (err as Error).message })),
        ),
    );
  }

  // ---- the loop ---------------------------------------------------------------------------

  private kick(): void {
    if (this.queued || this.closed) return;
    this.queued = true;
    void this.exclusive(async () => {
      this.queued = false;
      if (this.closed) return;
      try {
        await this.reconcile();
      } catch (err) {
        this.log.error({ err }, 'reconcile failed');
      }
    });
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  private async reconcile(): Promise<void> {
    this.reconciles++;
    const now = Date.now();
    const version = versionOf(this.desired) ?? 0;
    const current: Current = { version };
    try {
      if (!this.desired) throw new AgentManifestError('', 'no deployment has been read from the hub yet', 417);
      current.read = readAgentDesired(this.desired, { parentHostname: this.o.settings.parentHostname });
    } catch (err) {
      if (!(err instanceof AgentManifestError)) throw err;
      current.manifestError = err;
    }
    // A document that is not a deployment changes nothing on the device; it is only reported.
    if (!current.read) {
      this.current = { ...this.current, version, manifestError: current.manifestError };
      await this.report(this.current, [], await this.listAll(), now);
      return;
    }
    this.current = current;
    const problems: ModuleProblem[] = [...current.read.problems];
    const failures: ModuleProblem[] = [];
    // Modules whose new definition cannot be applied keep running as they are.
    const keep = new Set(problems.map((p) => p.module));
    const ready: DesiredModule[] = [];
    for (const m of current.read.deployment.modules) {
      if (!this.runtimeFor(m.type)) {
        problems.push({
          module: m.name,
          field: 'type',
          message:
            'this device has no container engine ([moby_runtime] uri in config.toml); only "process" modules run here',
        });
        keep.add(m.name);
        continue;
      }
      try {
        ready.push({ ...m, spec: await this.prepare(m) });
      } catch (err) {
        failures.push({ module: m.name, field: 'identity', message: (err as Error).message });
        keep.add(m.name);
      }
    }
    current.read = { ...current.read, problems };

    for (const rt of this.runtimes()) {
      let states: ModuleState[];
      try {
        states = await rt.list();
      } catch (err) {
        // The engine is away: its modules are named, the other runtime's still reconciled.
        for (const m of ready.filter((x) => x.type === rt.kind))
          failures.push({ module: m.name, field: 'runtime', message: (err as Error).message });
        continue;
      }
      const actions = planActions({
        desired: ready.filter((m) => m.type === rt.kind),
        states,
        keep,
        mayRestart: (m, s) => this.agentStopped.has(m.name) || this.restartDue(m, s, now),
      });
      for (const a of actions) {
        try {
          await this.act(rt, a, states);
        } catch (err) {
          this.log.error({ module: a.name, action: a.kind, err: (err as Error).message }, 'module action failed');
          failures.push({
            module: a.name,
            field: a.kind === 'create' || a.kind === 'recreate' ? 'create' : a.kind,
            message: (err as Error).message,
          });
        }
      }
    }
    // Once per deployment (and after a retry is due): listing asks the hub, through every parent.
    if (this.identitySweepVersion !== version) {
      const swept = await this.removeStrayIdentities(
        new Set([...current.read.deployment.modules.map((m) => m.name), ...keep]),
      );
      if (swept) this.identitySweepVersion = version;
    }
    await this.report(current, failures, await this.listAll(), Date.now());
  }

  /** The module's identity and workload listener, and its spec with IoT Edge's environment. */
  private async prepare(m: DesiredModule): Promise<ModuleSpec> {
    let id = this.ids.get(m.name);
    if (!id) {
      id = await this.o.identities.ensure(m.name);
      this.ids.set(m.name, id);
    }
    const endpoint = await this.o.workload.serve(
      { moduleId: m.name, generationId: id.generationId, primaryKey: id.primaryKey, secondaryKey: id.secondaryKey },
      'unix',
    );
    const s = this.o.settings;
    const spec = withWorkload(m.spec, endpoint, {
      iothubHostName: s.iothubHostName,
      deviceId: s.deviceId,
      generationId: id.generationId,
      gatewayHostName: s.gatewayHostName,
    });
    // An image from the parent signs in as this edge device, unless the deployment names credentials.
    const login = this.o.parentRegistryLogin;
    if (
      spec.type === 'docker' &&
      !spec.registryAuth &&
      login &&
      namesParentRegistry(spec.image ?? '', s.parentHostname)
    ) {
      spec.registryAuth = { ...login(), serveraddress: `${s.parentHostname}:443` };
    }
    return { ...spec, specHash: specHashOf(spec) };
  }

  private async act(rt: ModuleRuntime, a: PlanAction, states: readonly ModuleState[]): Promise<void> {
    this.log.info({ module: a.name, action: a.kind, runtime: rt.kind }, `module ${a.kind}`);
    switch (a.kind) {
      case 'remove':
        await rt.remove(a.name);
        await this.o.workload.stop(a.name);
        this.restarts.delete(a.name);
        this.agentStopped.delete(a.name);
        return;
      case 'stop':
        this.agentStopped.add(a.name);
        await rt.stop(a.name);
        return;
      case 'recreate':
        await rt.remove(a.name);
        this.restarts.delete(a.name);
        await rt.create(a.spec);
        if (a.start) await rt.start(a.name);
        this.agentStopped.delete(a.name);
        return;
      case 'create':
        await rt.create(a.spec);
        if (a.start) await rt.start(a.name);
        this.agentStopped.delete(a.name);
        return;
      case 'restart':
        this.log.warn({ module: a.name }, 'restarting a module its health check calls unhealthy');
        this.restarts.set(a.name, recordRestart(this.record(a.name), Date.now()));
        await rt.stop(a.name);
        await rt.start(a.name);
        return;
      case 'start': {
        const s = states.find((x) => x.name === a.name);
        const ranBefore = s !== undefined && (s.exitedAt !== undefined || s.exitCode !== undefined);
        if (ranBefore && !this.agentStopped.has(a.name)) {
          this.restarts.set(a.name, recordRestart(this.record(a.name), Date.now()));
        }
        await rt.start(a.name);
        this.agentStopped.delete(a.name);
        return;
      }
    }
  }

  /** Module identities of this device that no deployment names any more go, as IoT Edge removes them. */
  private async removeStrayIdentities(wanted: Set<string>): Promise<boolean> {
    let listed: string[];
    try {
      listed = await this.o.identities.list();
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'could not list module identities');
      return false;
    }
    let done = true;
    for (const id of listed) {
      if (wanted.has(id) || id.startsWith('$')) continue;
      try {
        await this.o.identities.remove(id);
        this.ids.delete(id);
        this.log.info({ module: id }, 'module identity removed: no longer in the deployment');
      } catch (err) {
        this.log.warn({ module: id, err: (err as Error).message }, 'could not remove a module identity');
        done = false;
      }
    }
    return done;
  }

  private restartDue(m: DesiredModule, s: ModuleState, now: number): boolean {
    const d = decideRestart(s, m.restartPolicy, this.record(m.name), now, { settings: this.restartSettings });
    return (
      (d.runtimeStatus === 'backoff' || d.runtimeStatus === 'unhealthy') &&
      d.restartAt !== undefined &&
      d.restartAt <= now
    );
  }

  private decide(m: DesiredModule, s: ModuleState, now: number) {
    return decideRestart(s, m.restartPolicy, this.record(m.name), now, {
      stoppedByAgent: m.status === 'stopped' || this.agentStopped.has(m.name),
      settings: this.restartSettings,
    });
  }

  private record(name: string): RestartRecord {
    return this.restarts.get(name) ?? { restartCount: 0 };
  }

  // ---- reporting --------------------------------------------------------------------------

  private lastProblems: ModuleProblem[] = [];

  private problemText(name: string): string | undefined {
    const mine = this.lastProblems.filter((p) => p.module === name);
    return mine.length > 0 ? mine.map((p) => `${p.field}: ${p.message}`).join('; ') : undefined;
  }

  private async report(
    current: Current,
    failures: ModuleProblem[],
    states: Map<string, { state: ModuleState; runtime: ModuleRuntime }>,
    now: number,
  ): Promise<void> {
    const modules = current.read?.deployment.modules ?? [];
    let nextRestart: number | undefined;
    const observations = new Map<string, ModuleObservation>();
    for (const [name, { state }] of states) {
      const m = modules.find((x) => x.name === name);
      const record = resetIfHealthy(this.record(name), state, now, this.restartSettings);
      if (record !== this.record(name)) this.restarts.set(name, record);
      const decision = m ? this.decide(m, state, now) : undefined;
      if (decision?.restartAt !== undefined) nextRestart = Math.min(nextRestart ?? Infinity, decision.restartAt);
      observations.set(name, { state, record, decision });
    }
    this.lastProblems = [...(current.read?.problems ?? []), ...failures];
    this.scheduleRestart(nextRestart, now);
    this.saveState();

    const next = buildAgentReported({
      desiredVersion: current.version,
      deployment: current.read?.deployment,
      manifestError: current.manifestError,
      problems: current.read?.problems ?? [],
      failures,
      observe: (name) => observations.get(name),
      agentStartedAt: this.startedAt,
      platform: { os: platform(), architecture: arch(), version: release() },
    });
    if (!this.reportPending && this.lastReported && sameReport(this.lastReported, next)) return;
    const patch = reportedPatch(this.lastReported, next);
    try {
      await this.o.twin.twinPatchReported(patch);
      this.lastReported = next;
      this.reportPending = false;
    } catch (err) {
      this.reportPending = true;
      this.log.debug({ err: (err as Error).message }, 'could not report the $edgeAgent state upstream (will retry)');
    }
  }

  private scheduleRestart(at: number | undefined, now: number): void {
    clearTimeout(this.restartTimer);
    if (at === undefined || this.closed) return;
    this.restartTimer = setTimeout(() => this.kick(), Math.max(0, at - now) + 50);
    this.restartTimer.unref();
  }

  private saveState(): void {
    const state = {
      desired: this.desired,
      restarts: Object.fromEntries(this.restarts),
      agentStopped: [...this.agentStopped],
    };
    const text = JSON.stringify(state);
    if (text === this.lastSavedState) return;
    this.lastSavedState = text;
    writeAgentState(this.statePath, state);
  }

  // ---- runtimes ---------------------------------------------------------------------------

  private runtimes(): ModuleRuntime[] {
    return [this.o.runtimes.process, ...(this.o.runtimes.docker ? [this.o.runtimes.docker] : [])];
  }

  private runtimeFor(type: 'docker' | 'process'): ModuleRuntime | undefined {
    return type === 'process' ? this.o.runtimes.process : this.o.runtimes.docker;
  }

  private async listAll(): Promise<Map<string, { state: ModuleState; runtime: ModuleRuntime }>> {
    const out = new Map<string, { state: ModuleState; runtime: ModuleRuntime }>();
    for (const rt of this.runtimes()) {
      try {
        for (const state of await rt.list()) out.set(state.name, { state, runtime: rt });
      } catch (err) {
        this.log.warn({ runtime: rt.kind, err: (err as Error).message }, 'could not list the modules of a runtime');
      }
    }
    return out;
  }
}

/** Asked about a module this agent does not run. */
export class UnknownModuleError extends Error {
  constructor(readonly module: string) {
    super(`no module named '${module}' runs on this device`);
    this.name = 'UnknownModuleError';
  }
}

function versionOf(desired: TwinCollection | undefined): number | undefined {
  const v = desired?.$version;
  return typeof v === 'number' ? v : undefined;
}

function ownProperties(c: TwinCollection): Json {
  return Object.fromEntries(Object.entries(c).filter(([k]) => !k.startsWith('$')));
}

/** Equal apart from status descriptions ("Up 3 minutes" changes every tick: not worth a report by itself). */
function sameReport(a: Json, b: Json): boolean {
  const strip = (r: Json) => JSON.stringify(r, (k, v) => (k === 'statusDescription' ? undefined : v));
  return strip(a) === strip(b);
}
