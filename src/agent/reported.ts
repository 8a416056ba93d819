import {
  type AgentDeployment,
  type AgentManifestError,
  type DesiredModule,
  formatProblem,
  type ModuleProblem,
} from './manifest.ts';
import type { ModuleRunState, RestartDecision, RestartRecord } from './restart-policy.ts';
import type { ModuleState } from './runtime.ts';

/**
 * The `$edgeAgent` reported properties, shaped as IoT Edge's agent reports them, so tools that
 * read `Registry.getModuleTwin(edge, '$edgeAgent')` (portal views, `az iot`, scripts) work:
 * lastDesiredVersion, lastDesiredStatus {code, description}, runtime, systemModules, and per
 * module runtimeStatus, exitCode, statusDescription, times, restartCount and the desired fields.
 */

/** lastDesiredStatus codes IoT Edge uses; a refused document carries its own (AgentManifestError.status). */
export const DESIRED_STATUS_CODES = {
  ok: 200,
  /** A module or field of the deployment is invalid. */
  invalidConfig: 400,
  /** The schemaVersion is not supported. */
  invalidSchemaVersion: 412,
  /** No deployment yet: the desired properties are empty. */
  emptyConfig: 417,
  /** Applying the deployment failed on the device (e.g. an image could not be pulled). */
  failed: 500,
} as const;

export interface ModuleObservation {
  state?: ModuleState;
  record?: RestartRecord;
  decision?: RestartDecision;
}

export interface ReportInput {
  /** `$version` of the desired properties the report answers. */
  desiredVersion: number;
  /** The deployment read, or undefined when it was refused as a whole (`manifestError`). */
  deployment?: AgentDeployment;
  manifestError?: AgentManifestError;
  /** Per-module problems from reading the manifest. */
  problems: readonly ModuleProblem[];
  /** Per-module failures while applying it (pull or create failed). */
  failures?: readonly ModuleProblem[];
  /** What the runtime and the restart bookkeeping know of a module, by name. */
  observe: (name: string) => ModuleObservation | undefined;
  /** When Strata's own agent and gateway started (epoch ms). */
  agentStartedAt: number;
  platform?: { os: string; architecture: string; version: string };
}

type Json = Record<string, unknown>;

const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());

export function lastDesiredStatus(input: ReportInput): { code: number; description: string } {
  if (input.manifestError) {
    return { code: input.manifestError.status, description: input.manifestError.message };
  }
  if (input.problems.length > 0) {
    return { code: DESIRED_STATUS_CODES.invalidConfig, description: input.problems.map(formatProblem).join('; ') };
  }
  if (input.failures && input.failures.length > 0) {
    return { code: DESIRED_STATUS_CODES.failed, description: input.failures.map(formatProblem).join('; ') };
  }
  return { code: DESIRED_STATUS_CODES.ok, description: '' };
}

export function buildAgentReported(input: ReportInput): Json {
  const d = input.deployment;
  const runtime: Json = { type: d?.runtime.type ?? 'docker' };
  const settings: Json = {};
  // Credentials are never reported: reported properties are readable by every service client.
  if (d?.runtime.settings.minDockerVersion) settings.minDockerVersion = d.runtime.settings.minDockerVersion;
  if (d?.runtime.settings.loggingOptions) settings.loggingOptions = d.runtime.settings.loggingOptions;
  runtime.settings = settings;
  if (input.platform) runtime.platform = input.platform;

  const systemModules: Json = {};
  for (const name of ['edgeAgent', 'edgeHub'] as const) {
    const sys = d?.systemModules.find((s) => s.name === name);
    const entry: Json = {
      runtimeStatus: 'running',
      lastStartTimeUtc: iso(input.agentStartedAt),
      type: sys?.type ?? 'docker',
    };
    if (sys?.image) entry.settings = { image: sys.image };
    if (name === 'edgeHub') {
      entry.status = 'running';
      entry.restartPolicy = 'always';
    }
    systemModules[name] = entry;
  }

  const modules: Json = {};
  for (const m of d?.modules ?? []) modules[m.name] = moduleEntry(m, input.observe(m.name));
  // A module whose new definition is invalid is still reported, with what is wrong with it.
  const badNames = [...new Set([...input.problems, ...(input.failures ?? [])].map((p) => p.module))];
  for (const name of badNames) {
    const why = [...input.problems, ...(input.failures ?? [])]
      .filter((p) => p.module === name)
      .map((p) => `${p.field}: ${p.message}`)
      .join('; ');
    const existing = modules[name] as Json | undefined;
    if (existing) {
      if (existing.runtimeStatus !== 'running') existing.statusDescription = why;
      continue;
    }
    const obs = input.observe(name);
    modules[name] = {
      ...stateFields(obs),
      runtimeStatus: obs?.state ? (obs.decision?.runtimeStatus ?? obs.state.runtimeStatus) : 'unknown',
      statusDescription: why,
    };
  }

  const out: Json = {
    schemaVersion: d?.schemaVersion ?? '1.1',
    lastDesiredVersion: input.desiredVersion,
    lastDesiredStatus: lastDesiredStatus(input),
    runtime,
    systemModules,
    modules,
  };
  return dropUndefined(out) as Json;
}

function stateFields(obs: ModuleObservation | undefined): Json {
  const s = obs?.state;
  return {
    exitCode: s?.exitCode,
    lastStartTimeUtc: iso(s?.startedAt),
    lastExitTimeUtc: iso(s?.exitedAt),
    restartCount: obs?.record?.restartCount ?? 0,
    lastRestartTimeUtc: iso(obs?.record?.lastRestartTime),
    statusDescription: obs?.decision?.statusDescription,
  };
}

function moduleEntry(m: DesiredModule, obs: ModuleObservation | undefined): Json {
  const runtimeStatus: ModuleRunState = obs?.decision?.runtimeStatus ?? obs?.state?.runtimeStatus ?? 'unknown';
  const settings: Json =
    m.type === 'docker'
      ? {
          image: m.settings.image,
          createOptions: m.settings.createOptions ? JSON.stringify(m.settings.createOptions) : undefined,
        }
      : { command: m.settings.command, args: m.settings.args, cwd: m.settings.cwd };
  const entry: Json = {
    ...stateFields(obs),
    runtimeStatus,
    version: m.version,
    type: m.type,
    settings,
    status: m.status,
    restartPolicy: m.restartPolicy,
    imagePullPolicy: m.type === 'docker' ? m.imagePullPolicy : undefined,
  };
  if (entry.statusDescription === undefined && runtimeStatus === 'unknown') {
    entry.statusDescription = 'not created yet';
  }
  return entry;
}

function dropUndefined(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(dropUndefined);
  if (typeof v === 'object' && v !== null) {
    const out: Json = {};
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) continue;
      out[k] = dropUndefined(x);
    }
    return out;
  }
  return v;
}

/**
 * Reported properties are merged as a JSON merge patch: a module (or field) in the previous
 * report but not in the next must be sent as null, or it would stay in the twin forever.
 */
export function reportedPatch(previous: Json | undefined, next: Json): Json {
  const patch: Json = { ...next };
  if (!previous) return patch;
  for (const [k, old] of Object.entries(previous)) {
    const now = next[k];
    if (now === undefined) patch[k] = null;
    else if (isPlain(old) && isPlain(now)) patch[k] = reportedPatch(old, now);
  }
  return patch;
}

function isPlain(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
