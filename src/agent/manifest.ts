import { createHash } from 'node:crypto';
import { isReservedModuleId, moduleIdProblem } from '../identity/device-id.ts';
import type { ModuleSpec } from './runtime.ts';

/**
 * Reads an edge device's `$edgeAgent` desired properties as IoT Edge writes them (schema 1.0 and
 * 1.1) into what the agent runs. A module with a bad field is left out and named in `problems`;
 * the others still deploy, so one typo does not stop a whole device. Only a document that is not
 * a deployment at all (wrong schemaVersion, no modules object) is refused as a whole.
 */

export const SCHEMA_VERSIONS = ['1.0', '1.1'] as const;
export type SchemaVersion = (typeof SCHEMA_VERSIONS)[number];
export const DESIRED_STATUSES = ['running', 'stopped'] as const;
export type DesiredStatus = (typeof DESIRED_STATUSES)[number];
export const RESTART_POLICIES = ['never', 'on-failure', 'on-unhealthy', 'always'] as const;
export type RestartPolicy = (typeof RESTART_POLICIES)[number];
export const IMAGE_PULL_POLICIES = ['on-create', 'never'] as const;
export type ImagePullPolicy = (typeof IMAGE_PULL_POLICIES)[number];
export const MODULE_TYPES = ['docker', 'process'] as const;
export type ModuleType = (typeof MODULE_TYPES)[number];

/** IoT Edge's defaults for fields a module may leave out. startupOrder is an unsigned 32-bit int. */
export const DEFAULT_STATUS: DesiredStatus = 'running';
export const DEFAULT_RESTART_POLICY: RestartPolicy = 'on-unhealthy';
export const DEFAULT_IMAGE_PULL_POLICY: ImagePullPolicy = 'on-create';
export const MAX_STARTUP_ORDER = 4294967295;

/** The `$edgeAgent` and `$edgeHub` system modules: they name Strata's own agent and gateway. */
export const SYSTEM_MODULES = ['edgeAgent', 'edgeHub'] as const;

export interface RegistryCredential {
  address: string;
  username: string;
  password: string;
}

export interface DesiredModule {
  name: string;
  version?: string;
  type: ModuleType;
  status: DesiredStatus;
  restartPolicy: RestartPolicy;
  startupOrder: number;
  imagePullPolicy: ImagePullPolicy;
  settings: {
    /** As written in the deployment (`$upstream` unresolved), for reporting. */
    image?: string;
    /** The pieces (createOptions, createOptions01, ...) joined and parsed. */
    createOptions?: Record<string, unknown>;
    command?: string;
    args?: string[];
    cwd?: string;
  };
  env: Record<string, string>;
  /** What the runtime is given. */
  spec: ModuleSpec;
}

export interface SystemModule {
  name: (typeof SYSTEM_MODULES)[number];
  type?: string;
  image?: string;
  status?: string;
  restartPolicy?: string;
}

export interface AgentDeployment {
  schemaVersion: SchemaVersion;
  runtime: {
    type: string;
    settings: {
      minDockerVersion?: string;
      loggingOptions?: string;
      registryCredentials: Record<string, RegistryCredential>;
    };
  };
  systemModules: SystemModule[];
  /** Valid modules only, in startup order (lower first, then by name). */
  modules: DesiredModule[];
}

/** One thing wrong with one module: `field` is the path inside the module, e.g. `settings.createOptions`. */
export interface ModuleProblem {
  module: string;
  field: string;
  message: string;
}

export interface ReadResult {
  deployment: AgentDeployment;
  problems: ModuleProblem[];
}

/** The whole document is not a deployment. `status` is the lastDesiredStatus code IoT Edge reports. */
export class AgentManifestError extends Error {
  constructor(
    readonly field: string,
    message: string,
    readonly status: 400 | 412 | 417 = 400,
  ) {
    super(message);
    this.name = 'AgentManifestError';
  }
}

export interface ReadOptions {
  /** The parent's host name, for `$upstream` in image names; undefined on a top-layer device. */
  parentHostname?: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function formatProblem(p: ModuleProblem): string {
  return `module ${p.module}: ${p.field}: ${p.message}`;
}

/** Reads `$edgeAgent` desired properties (the `properties.desired` object). */
export function readAgentDesired(desired: unknown, opts: ReadOptions = {}): ReadResult {
  if (!isObject(desired)) throw new AgentManifestError('', 'the $edgeAgent desired properties are not an object');
  // Before any deployment the twin holds only $version and $metadata: IoT Edge reports 417.
  if (!Object.keys(desired).some((k) => !k.startsWith('$'))) {
    throw new AgentManifestError('', 'no deployment has been applied to this device yet', 417);
  }
  const schemaVersion = desired.schemaVersion;
  if (typeof schemaVersion !== 'string' || !(SCHEMA_VERSIONS as readonly string[]).includes(schemaVersion)) {
    throw new AgentManifestError(
      'schemaVersion',
      `schemaVersion ${JSON.stringify(schemaVersion)} is not supported (use "1.0" or "1.1")`,
      412,
    );
  }
  const runtime = readRuntime(desired.runtime);
  const problems: ModuleProblem[] = [];
  const systemModules = readSystemModules(desired.systemModules, problems);
  const modulesIn = desired.modules ?? {};
  if (!isObject(modulesIn)) throw new AgentManifestError('modules', 'modules is not an object of modules by name');
  const modules: DesiredModule[] = [];
  for (const [name, raw] of Object.entries(modulesIn)) {
    const m = readModule(name, raw, runtime.settings.registryCredentials, opts, problems);
    if (m) modules.push(m);
  }
  modules.sort(byStartupOrder);
  return {
    deployment: { schemaVersion: schemaVersion as SchemaVersion, runtime, systemModules, modules },
    problems,
  };
}

export function byStartupOrder(a: { startupOrder: number; name: string }, b: { startupOrder: number; name: string }) {
  return a.startupOrder - b.startupOrder || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

function readRuntime(raw: unknown): AgentDeployment['runtime'] {
  if (raw === undefined) return { type: 'docker', settings: { registryCredentials: {} } };
  if (!isObject(raw)) throw new AgentManifestError('runtime', 'runtime is not an object');
  // IoT Edge knows only "docker"; a missing type is taken as that.
  const type = raw.type ?? 'docker';
  if (type !== 'docker') {
    throw new AgentManifestError(
      'runtime.type',
      `runtime.type ${JSON.stringify(type)} is not supported (use "docker")`,
    );
  }
  const settings = raw.settings ?? {};
  if (!isObject(settings)) throw new AgentManifestError('runtime.settings', 'runtime.settings is not an object');
  const out: AgentDeployment['runtime']['settings'] = { registryCredentials: {} };
  for (const key of ['minDockerVersion', 'loggingOptions'] as const) {
    const v = settings[key];
    if (v === undefined || v === '') continue;
    if (typeof v !== 'string')
      throw new AgentManifestError(`runtime.settings.${key}`, `runtime.settings.${key} is not a string`);
    out[key] = v;
  }
  const creds = settings.registryCredentials ?? {};
  if (!isObject(creds)) {
    throw new AgentManifestError('runtime.settings.registryCredentials', 'registryCredentials is not an object');
  }
  for (const [id, c] of Object.entries(creds)) {
    const field = `runtime.settings.registryCredentials.${id}`;
    if (!isObject(c)) throw new AgentManifestError(field, `${field} is not an object`);
    for (const k of ['address', 'username', 'password'] as const) {
      if (typeof c[k] !== 'string' || c[k] === '') {
        throw new AgentManifestError(`${field}.${k}`, `${field}.${k} is missing or not a string`);
      }
    }
    out.registryCredentials[id] = {
      address: c.address as string,
      username: c.username as string,
      password: c.password as string,
    };
  }
  return { type, settings: out };
}

function readSystemModules(raw: unknown, problems: ModuleProblem[]): SystemModule[] {
  if (raw === undefined) return [];
  if (!isObject(raw)) throw new AgentManifestError('systemModules', 'systemModules is not an object');
  const out: SystemModule[] = [];
  for (const [name, m] of Object.entries(raw)) {
    if (!(SYSTEM_MODULES as readonly string[]).includes(name)) {
      problems.push({ module: name, field: 'systemModules', message: 'only edgeAgent and edgeHub are system modules' });
      continue;
    }
    const mod: SystemModule = { name: name as SystemModule['name'] };
    if (isObject(m)) {
      if (typeof m.type === 'string') mod.type = m.type;
      if (isObject(m.settings) && typeof m.settings.image === 'string') mod.image = m.settings.image;
      if (typeof m.status === 'string') mod.status = m.status;
      if (typeof m.restartPolicy === 'string') mod.restartPolicy = m.restartPolicy;
    }
    out.push(mod);
  }
  return out;
}

/** Reads one enumerated field; IoT Edge accepts any letter case. */
function readEnum<T extends string>(
  m: Record<string, unknown>,
  key: string,
  allowed: readonly T[],
  fallback: T,
  report: (field: string, message: string) => void,
): T | undefined {
  const v = m[key];
  if (v === undefined) return fallback;
  const lower = typeof v === 'string' ? v.toLowerCase() : undefined;
  if (lower !== undefined && (allowed as readonly string[]).includes(lower)) return lower as T;
  report(key, `${JSON.stringify(v)} is not one of ${allowed.join(', ')}`);
  return undefined;
}

function readModule(
  name: string,
  raw: unknown,
  creds: Record<string, RegistryCredential>,
  opts: ReadOptions,
  problems: ModuleProblem[],
): DesiredModule | undefined {
  let ok = true;
  const report = (field: string, message: string) => {
    problems.push({ module: name, field, message });
    ok = false;
  };
  const idProblem = moduleIdProblem(name);
  if (idProblem) report('name', `not a valid module identity: ${idProblem}`);
  else if (isReservedModuleId(name)) report('name', 'module names starting with $ are reserved for the runtime');
  if (!isObject(raw)) {
    report('', 'the module is not an object');
    return undefined;
  }
  const type = raw.type;
  if (typeof type !== 'string' || !(MODULE_TYPES as readonly string[]).includes(type)) {
    report('type', `${JSON.stringify(type)} is not a module type (use "docker", or "process" for a command)`);
  }
  const status = readEnum(raw, 'status', DESIRED_STATUSES, DEFAULT_STATUS, report);
  const restartPolicy = readEnum(raw, 'restartPolicy', RESTART_POLICIES, DEFAULT_RESTART_POLICY, report);
  const imagePullPolicy = readEnum(raw, 'imagePullPolicy', IMAGE_PULL_POLICIES, DEFAULT_IMAGE_PULL_POLICY, report);
  let startupOrder = MAX_STARTUP_ORDER;
  if (raw.startupOrder !== undefined) {
    const s = raw.startupOrder;
    if (typeof s === 'number' && Number.isInteger(s) && s >= 0 && s <= MAX_STARTUP_ORDER) startupOrder = s;
    else report('startupOrder', `${JSON.stringify(s)} is not a whole number from 0 to ${MAX_STARTUP_ORDER}`);
  }
  let version: string | undefined;
  if (raw.version !== undefined) {
    if (typeof raw.version === 'string') version = raw.version;
    else report('version', 'is not a string');
  }
  const env = readEnv(raw.env, report);
  const settingsRaw = raw.settings ?? {};
  const settings: DesiredModule['settings'] = {};
  if (!isObject(settingsRaw)) report('settings', 'is not an object');
  else if (type === 'docker') readDockerSettings(settingsRaw, settings, opts, report);
  else if (type === 'process') readProcessSettings(settingsRaw, settings, report);
  if (!ok) return undefined;

  const spec: Omit<ModuleSpec, 'specHash'> = { name, type: type as ModuleType, env };
  if (type === 'docker') {
    const image = resolveUpstream(settings.image as string, opts.parentHostname) as string;
    spec.image = image;
    spec.createOptions = settings.createOptions ?? {};
    spec.imagePullPolicy = imagePullPolicy;
    const auth = registryAuthFor(image, creds);
    if (auth) spec.registryAuth = auth;
  } else {
    spec.command = settings.command;
    spec.args = settings.args ?? [];
    if (settings.cwd !== undefined) spec.cwd = settings.cwd;
  }
  const m: DesiredModule = {
    name,
    type: type as ModuleType,
    status: status as DesiredStatus,
    restartPolicy: restartPolicy as RestartPolicy,
    startupOrder,
    imagePullPolicy: imagePullPolicy as ImagePullPolicy,
    settings,
    env,
    spec: withSpecHash(spec),
  };
  if (version !== undefined) m.version = version;
  return m;
}

function readEnv(raw: unknown, report: (field: string, message: string) => void): Record<string, string> {
  const env: Record<string, string> = {};
  if (raw === undefined) return env;
  if (!isObject(raw)) {
    report('env', 'is not an object of {"NAME": {"value": ...}}');
    return env;
  }
  for (const [k, v] of Object.entries(raw)) {
    if (k === '' || k.includes('=') || k.includes('\0')) {
      report(`env.${k}`, 'is not a valid environment variable name');
      continue;
    }
    const value = isObject(v) ? v.value : undefined;
    if (typeof value === 'string') env[k] = value;
    else if (typeof value === 'number' || typeof value === 'boolean') env[k] = String(value);
    else report(`env.${k}.value`, 'is missing or not a string');
  }
  return env;
}

/**
 * createOptions is a JSON string; IoT Edge splits long ones over createOptions01,
 * createOptions02, ... (each a string), which are joined in order before parsing.
 */
export function joinCreateOptions(settings: Record<string, unknown>): {
  text?: string;
  field?: string;
  error?: string;
} {
  const first = settings.createOptions;
  const extraKeys = Object.keys(settings)
    .filter((k) => /^createOptions\d{2}$/.test(k))
    .sort((a, b) => Number(a.slice(13)) - Number(b.slice(13)));
  if (first === undefined) {
    if (extraKeys.length > 0)
      return { field: `settings.${extraKeys[0]}`, error: 'is given without settings.createOptions' };
    return {};
  }
  if (typeof first !== 'string') return { field: 'settings.createOptions', error: 'is not a JSON string' };
  let text = first;
  for (const [i, key] of extraKeys.entries()) {
    const expected = `createOptions${String(i + 1).padStart(2, '0')}`;
    if (key !== expected) return { field: `settings.${expected}`, error: `is missing but ${key} is given` };
    const part = settings[key];
    if (typeof part !== 'string') return { field: `settings.${key}`, error: 'is not a string' };
    text += part;
  }
  return { text };
}

function readDockerSettings(
  raw: Record<string, unknown>,
  out: DesiredModule['settings'],
  opts: ReadOptions,
  report: (field: string, message: string) => void,
): void {
  if (typeof raw.image !== 'string' || raw.image.trim() === '') report('settings.image', 'is missing');
  else {
    out.image = raw.image;
    if (/^\$upstream[:/]/.test(raw.image) && !opts.parentHostname) {
      report('settings.image', 'names $upstream but this device has no parent');
    }
  }
  const joined = joinCreateOptions(raw);
  if (joined.error) report(joined.field as string, joined.error);
  else if (joined.text !== undefined && joined.text.trim() !== '') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(joined.text);
    } catch (err) {
      report('settings.createOptions', `is not valid JSON: ${(err as Error).message}`);
      return;
    }
    if (!isObject(parsed)) report('settings.createOptions', 'is not a JSON object');
    else out.createOptions = parsed;
  }
}

function readProcessSettings(
  raw: Record<string, unknown>,
  out: DesiredModule['settings'],
  report: (field: string, message: string) => void,
): void {
  if (typeof raw.command !== 'string' || raw.command.trim() === '') report('settings.command', 'is missing');
  else out.command = raw.command;
  if (raw.args !== undefined) {
    if (Array.isArray(raw.args) && raw.args.every((a) => typeof a === 'string')) out.args = raw.args as string[];
    else report('settings.args', 'is not an array of strings');
  }
  if (raw.cwd !== undefined) {
    if (typeof raw.cwd === 'string' && raw.cwd !== '') out.cwd = raw.cwd;
    else report('settings.cwd', 'is not a directory path');
  }
}

/** `$upstream:443/name:tag` pulls through the parent: `$upstream` becomes its host name. */
export function resolveUpstream(image: string, parentHostname: string | undefined): string {
  if (!/^\$upstream[:/]/.test(image) || !parentHostname) return image;
  return parentHostname + image.slice('$upstream'.length);
}

/**
 * Whether an image is pulled from the parent's registry API (`parent/...` or `parent:443/...`,
 * what `$upstream:443/...` resolves to): such a pull signs in as the edge device itself.
 */
export function namesParentRegistry(image: string, parentHostname: string | undefined): boolean {
  if (!parentHostname) return false;
  const lower = image.toLowerCase();
  const parent = parentHostname.toLowerCase();
  return lower.startsWith(`${parent}/`) || lower.startsWith(`${parent}:443/`);
}

/** The registry host of an image reference, or undefined for Docker Hub's short names. */
export function imageRegistry(image: string): string | undefined {
  const slash = image.indexOf('/');
  if (slash < 0) return undefined;
  const first = image.slice(0, slash);
  return first.includes('.') || first.includes(':') || first === 'localhost' ? first.toLowerCase() : undefined;
}

function registryAuthFor(image: string, creds: Record<string, RegistryCredential>): ModuleSpec['registryAuth'] {
  const host = imageRegistry(image);
  if (!host) return undefined;
  for (const c of Object.values(creds)) {
    const address = c.address
      .replace(/^https?:\/\//i, '')
      .replace(/\/+$/, '')
      .toLowerCase();
    if (address === host) return { username: c.username, password: c.password, serveraddress: c.address };
  }
  return undefined;
}

/** JSON with object keys sorted, so the digest does not depend on key order. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (isObject(v)) {
    return `{${Object.keys(v)
      .filter((k) => v[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/**
 * A stable digest of what the runtime needs; the agent recomputes it after adding IOTEDGE_* env.
 * Registry credentials are left out: rotating a password must not recreate running modules.
 */
export function specHashOf(spec: Omit<ModuleSpec, 'specHash'> | ModuleSpec): string {
  const { specHash: _hash, registryAuth: _auth, ...rest } = spec as ModuleSpec;
  return createHash('sha256').update(canonical(rest)).digest('hex').slice(0, 32);
}

export function withSpecHash(spec: Omit<ModuleSpec, 'specHash'>): ModuleSpec {
  return { ...spec, specHash: specHashOf(spec) };
}
