import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { childLog } from '../util/log.ts';
import { withinTime } from './log-filter.ts';
import { readLogLines, rotateIfOver, sleep } from './module-log.ts';
import { findByEnvironment, isSameProcess, processStartTime } from './process-identity.ts';
import type { LogOptions, ModuleRuntime, ModuleSpec, ModuleState, RuntimeStatus } from './runtime.ts';

/**
 * Modules of `type: "process"` (a Strata extension) run as child processes of the agent, for
 * machines without a container engine. Each module has a directory under `dir`: the spec it was
 * created from, its state (pid, start time, exit) and its output. A child runs in its own process
 * group, writing straight to its log file, so it outlives an agent killed with -9; the next agent
 * over the same directory adopts it (same pid and start time) instead of starting it again.
 */

const SPEC_FILE = 'spec.json';
const STATE_FILE = 'state.json';
const LOG_FILE = 'output.log';

export interface ProcessRuntimeOptions {
  /** Where module directories live, e.g. DATA/agent/modules. */
  dir: string;
  /** A module's log file is rotated (once) past this size. Default 4 MiB. */
  logMaxBytes?: number;
  /** How often adopted modules are checked for liveness and logs for size. Default 1 s. */
  pollMs?: number;
}

/** What state.json holds. `exitedAt` without `exitCode`: the module ended while no agent could see how. */
interface ProcessStateFile {
  pid?: number;
  startTime?: string;
  startedAt?: number;
  exitedAt?: number;
  exitCode?: number;
  /** True when the agent stopped it (not an exit of its own). */
  stopped?: boolean;
  /** Set just before spawning (and in the module's environment), cleared once the pid is recorded. */
  launching?: string;
}

/** Marks a module's process with its launch, so an agent that dies mid-start can still find it. */
const LAUNCH_ENV = 'STRATA_MODULE_LAUNCH';

interface SpecFile {
  specHash: string;
  spec: ModuleSpec;
}

interface OwnChild {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
}

const log = childLog('process-runtime');

/** A spec the runtime can run, or an error naming the field that is wrong. */
export function checkProcessSpec(spec: ModuleSpec): void {
  const where = `process module ${JSON.stringify(spec?.name)}`;
  if (typeof spec?.name !== 'string' || !spec.name) throw new Error(`${where}: name: must be a non-empty string`);
  if (spec.name === '.' || spec.name === '..' || /[/\\\0]/.test(spec.name) || spec.name.length > 128) {
    throw new Error(`${where}: name: must be at most 128 characters without '/', '\\' or NUL, and not '.' or '..'`);
  }
  if (spec.type !== 'process') throw new Error(`${where}: type: must be "process", not ${JSON.stringify(spec.type)}`);
  if (typeof spec.command !== 'string' || !spec.command.trim()) {
    throw new Error(`${where}: command: must be a non-empty string`);
  }
  if (spec.args !== undefined && (!Array.isArray(spec.args) || spec.args.some((a) => typeof a !== 'string'))) {
    throw new Error(`${where}: args: must be a list of strings`);
  }
  if (spec.cwd !== undefined && (typeof spec.cwd !== 'string' || !spec.cwd)) {
    throw new Error(`${where}: cwd: must be a non-empty string`);
  }
  if (!spec.env || typeof spec.env !== 'object' || Array.isArray(spec.env)) {
    throw new Error(`${where}: env: must be an object of strings`);
  }
  for (const [k, v] of Object.entries(spec.env)) {
    if (typeof v !== 'string') throw new Error(`${where}: env.${k}: must be a string`);
    if (!k || k.includes('=') || k.includes('\0') || v.includes('\0')) {
      throw new Error(`${where}: env.${k}: a name must be non-empty without '=' or NUL, a value without NUL`);
    }
  }
  if (typeof spec.specHash !== 'string' || !spec.specHash) throw new Error(`${where}: specHash: must be set`);
}

export class ProcessRuntime implements ModuleRuntime {
  readonly kind = 'process' as const;
  private readonly dir: string;
  private readonly logMaxBytes: number;
  private readonly children = new Map<string, OwnChild>();
  /** Modules being stopped or removed: their end is not an exit of their own. */
  private readonly stopping = new Set<string>();
  private readonly listeners = new Set<(name: string, exitCode: number | undefined) => void>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(opts: ProcessRuntimeOptions) {
    this.dir = opts.dir;
    this.logMaxBytes = opts.logMaxBytes ?? 4 * 1024 * 1024;
    fs.mkdirSync(this.dir, { recursive: true });
    for (const name of this.names()) this.settleLaunch(name);
    this.timer = setInterval(() => this.poll(), opts.pollMs ?? 1000);
    this.timer.unref();
  }

  async list(): Promise<ModuleState[]> {
    const out: ModuleState[] = [];
    for (const name of this.names()) {
      const state = this.stateOf(name);
      if (state) out.push(state);
    }
    return out;
  }

  async create(spec: ModuleSpec): Promise<void> {
    checkProcessSpec(spec);
    await this.serial(spec.name, async () => {
      const dir = this.moduleDir(spec.name);
      if (fs.existsSync(path.join(dir, SPEC_FILE))) {
        throw new Error(`process module "${spec.name}" already exists; remove it before creating it again`);
      }
      fs.mkdirSync(dir, { recursive: true });
      // The env may carry secrets from the deployment: only this user reads it.
      const file: SpecFile = { specHash: spec.specHash, spec };
      writeFileAtomic(path.join(dir, SPEC_FILE), `${JSON.stringify(file, null, 2)}\n`, 0o600);
      writeFileAtomic(path.join(dir, STATE_FILE), '{}\n');
    });
  }

  async start(name: string): Promise<void> {
    await this.serial(name, () => this.startLocked(name));
  }

  async stop(name: string, timeoutMs = 10_000): Promise<void> {
    await this.serial(name, () => this.stopLocked(name, timeoutMs));
  }

  async remove(name: string): Promise<void> {
    await this.serial(name, async () => {
      await this.stopLocked(name, 10_000);
      fs.rmSync(this.moduleDir(name), { recursive: true, force: true });
    });
  }

  logs(name: string, opts: LogOptions = {}): AsyncIterable<string> {
    const dir = this.moduleDir(name);
    if (!fs.existsSync(dir)) throw new Error(`process module "${name}" does not exist`);
    const file = path.join(dir, LOG_FILE);
    if (opts.since === undefined && opts.until === undefined) return readLogLines(file, opts);
    // The file keeps no time per line: the lines' own times decide (log-filter.ts).
    return withinTime(readLogLines(file, { ...opts, tail: undefined }), opts);
  }

  onExit(listener: (name: string, exitCode: number | undefined) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Stops watching; the modules keep running, for the next agent to adopt. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.listeners.clear();
  }

  // --- lifecycle -------------------------------------------------------------------------------

  private async startLocked(name: string): Promise<void> {
    const { spec } = this.readSpec(name);
    const state = this.readState(name);
    if (this.isRunning(state)) return; // already running (perhaps adopted): nothing to do
    const dir = this.moduleDir(name);
    const env: Record<string, string> = {};
    for (const key of ['PATH', 'HOME']) {
      const v = process.env[key];
      if (v !== undefined) env[key] = v;
    }
    Object.assign(env, spec.env);
    const cwd = spec.cwd ?? dir;
    // spawn would blame the command for a missing working directory: name the right field.
    if (!fs.statSync(cwd, { throwIfNoEntry: false })?.isDirectory()) {
      throw new Error(`process module "${name}": cwd: ${JSON.stringify(cwd)} is not a directory`);
    }
    // The previous run's pid goes: a crash from here on leaves only the mark to find the new one by.
    const launching = randomUUID();
    env[LAUNCH_ENV] = launching;
    this.writeState(name, { launching });
    const out = fs.openSync(path.join(dir, LOG_FILE), 'a');
    let child: ChildProcess;
    try {
      // Own process group: stop signals the module and whatever it started; and the output goes
      // to a file, not a pipe, so an agent's death does not take the module with it.
      child = spawn(spec.command!, spec.args ?? [], {
        cwd,
        env,
        detached: true,
        stdio: ['ignore', out, out],
      });
    } finally {
      fs.closeSync(out);
    }
    try {
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
    } catch (err) {
      const why = (err as Error).message;
      fs.appendFileSync(path.join(dir, LOG_FILE), `strata: cannot start ${spec.command}: ${why}\n`);
      this.writeState(name, {
        ...state,
        launching: undefined,
        exitedAt: Date.now(),
        exitCode: undefined,
        stopped: false,
      });
      throw new Error(`process module "${name}": cannot start ${JSON.stringify(spec.command)}: ${why}`);
    }
    const pid = child.pid!;
    this.writeState(name, { pid, startTime: processStartTime(pid), startedAt: Date.now() });
    const exited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        this.onChildExit(name, pid, code, signal);
        resolve();
      });
    });
    this.children.set(name, { child, pid, exited });
    child.unref();
    log.info({ module: name, pid }, 'process module started');
  }

  /**
   * A previous agent died between spawning a module and recording its pid: find the process by
   * its launch mark and adopt it, or record that it is gone, so it is never started twice.
   */
  private settleLaunch(name: string): void {
    const state = this.readState(name);
    if (!state.launching || state.pid !== undefined) return;
    const found = findByEnvironment(LAUNCH_ENV, state.launching);
    if (found) {
      this.writeState(name, { pid: found.pid, startTime: found.startTime, startedAt: Date.now() });
      log.info({ module: name, pid: found.pid }, 'adopted a process module whose start was not recorded');
    } else {
      this.writeState(name, { ...state, launching: undefined });
    }
  }

  private onChildExit(name: string, pid: number, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.children.get(name)?.pid === pid) this.children.delete(name);
    // As a shell (and Docker) report it: 128 + the signal number for a module a signal ended.
    const exitCode = code ?? 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0);
    const byAgent = this.stopping.has(name);
    const state = this.readState(name);
    if (state.pid !== pid) return; // removed and recreated meanwhile
    this.writeState(name, { ...state, exitedAt: Date.now(), exitCode, stopped: byAgent });
    log.info({ module: name, pid, exitCode, stoppedByAgent: byAgent }, 'process module exited');
    if (!byAgent) this.notify(name, exitCode);
  }

  private async stopLocked(name: string, timeoutMs: number): Promise<void> {
    const state = this.readState(name);
    if (state.pid === undefined || state.exitedAt !== undefined) return;
    if (!this.isRunning(state)) {
      // It ended while no one watched (or the pid now names another process): only record that.
      this.writeState(name, { ...state, exitedAt: Date.now(), exitCode: undefined, stopped: true });
      return;
    }
    const pid = state.pid;
    const own = this.children.get(name);
    this.stopping.add(name);
    try {
      signalGroup(pid, 'SIGTERM');
      if (!(await this.waitGone(state, timeoutMs))) {
        log.warn({ module: name, pid, timeoutMs }, 'process module ignored SIGTERM; killing it');
        signalGroup(pid, 'SIGKILL');
        await this.waitGone(state, 5000);
      }
      // Whatever the module started and left behind in its group goes with it.
      signalGroup(pid, 'SIGKILL');
      if (own) {
        // Unreferenced so that an agent can exit while modules run; held while its end is awaited.
        own.child.ref();
        // Bounded: a process stuck in the kernel (state D) may take its time even after SIGKILL.
        await Promise.race([own.exited, sleep(5000)]);
        own.child.unref();
      } else {
        const now = this.readState(name);
        if (now.pid === pid && now.exitedAt === undefined) {
          this.writeState(name, { ...now, exitedAt: Date.now(), exitCode: undefined, stopped: true });
        }
      }
    } finally {
      this.stopping.delete(name);
    }
  }

  private async waitGone(state: ProcessStateFile, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.isRunning(state)) {
      if (Date.now() >= deadline) return false;
      await sleep(Math.min(50, Math.max(1, deadline - Date.now())));
    }
    return true;
  }

  /** Every second: adopted modules that ended are recorded and reported; logs kept under the cap. */
  private poll(): void {
    if (this.closed) return;
    for (const name of this.names()) {
      const dir = this.moduleDir(name);
      try {
        rotateIfOver(path.join(dir, LOG_FILE), this.logMaxBytes);
      } catch (err) {
        log.warn({ module: name, err: (err as Error).message }, 'cannot rotate a process module log');
      }
      if (this.children.has(name) || this.stopping.has(name) || this.locks.has(name)) continue;
      const state = this.readState(name);
      if (state.pid === undefined || state.exitedAt !== undefined || this.isRunning(state)) continue;
      try {
        this.writeState(name, { ...state, exitedAt: Date.now(), exitCode: undefined, stopped: false });
      } catch {
        continue; // removed meanwhile
      }
      log.info({ module: name, pid: state.pid }, 'adopted process module exited; its exit code is unknown');
      this.notify(name, undefined);
    }
  }

  private notify(name: string, exitCode: number | undefined): void {
    if (this.closed) return;
    for (const l of this.listeners) {
      try {
        l(name, exitCode);
      } catch (err) {
        log.error({ module: name, err: (err as Error).message }, 'an exit listener threw');
      }
    }
  }

  // --- the module directory --------------------------------------------------------------------

  private moduleDir(name: string): string {
    if (!name || name === '.' || name === '..' || /[/\\\0]/.test(name)) {
      throw new Error(`process module name ${JSON.stringify(name)} cannot name a directory`);
    }
    return path.join(this.dir, name);
  }

  /** Every module directory, whether or not the agent still asks for it (strays too). */
  private names(): string[] {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(this.dir, { withFileTypes: true });
    } catch {
      return [];
    }
    return entries
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
      .filter((n) => {
        const d = path.join(this.dir, n);
        return fs.existsSync(path.join(d, SPEC_FILE)) || fs.existsSync(path.join(d, STATE_FILE));
      })
      .sort();
  }

  private stateOf(name: string): ModuleState | undefined {
    let spec: SpecFile | undefined;
    try {
      spec = this.readSpec(name);
    } catch {
      spec = undefined; // a stray without a readable spec is still listed, to be removed
    }
    const state = this.readState(name);
    const running = this.isRunning(state);
    let runtimeStatus: RuntimeStatus = 'stopped';
    if (running) runtimeStatus = 'running';
    else if (state.exitCode !== undefined && state.exitCode !== 0 && !state.stopped) runtimeStatus = 'failed';
    return {
      name,
      runtimeStatus,
      exitCode: running ? undefined : state.exitCode,
      startedAt: state.startedAt,
      exitedAt: running ? undefined : state.exitedAt,
      specHash: spec?.specHash,
      image: spec ? [spec.spec.command, ...(spec.spec.args ?? [])].join(' ') : undefined,
      id: state.pid === undefined ? undefined : String(state.pid),
    };
  }

  private isRunning(state: ProcessStateFile): boolean {
    if (state.pid === undefined || state.exitedAt !== undefined) return false;
    return isSameProcess({ pid: state.pid, startTime: state.startTime });
  }

  private readSpec(name: string): SpecFile {
    const file = path.join(this.moduleDir(name), SPEC_FILE);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      throw new Error(`process module "${name}" does not exist`);
    }
    let parsed: SpecFile | undefined;
    try {
      parsed = JSON.parse(text) as SpecFile;
    } catch {
      parsed = undefined;
    }
    if (!parsed?.spec || typeof parsed.specHash !== 'string') {
      throw new Error(`process module "${name}": ${SPEC_FILE} is not a spec this runtime wrote`);
    }
    return parsed;
  }

  private readState(name: string): ProcessStateFile {
    try {
      const parsed = JSON.parse(fs.readFileSync(path.join(this.moduleDir(name), STATE_FILE), 'utf8'));
      return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as ProcessStateFile) : {};
    } catch {
      return {};
    }
  }

  private writeState(name: string, state: ProcessStateFile): void {
    writeFileAtomic(path.join(this.moduleDir(name), STATE_FILE), `${JSON.stringify(state)}\n`);
  }

  /** One operation per module at a time: a start racing a stop must not leave two processes. */
  private serial<T>(name: string, op: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(name) ?? Promise.resolve();
    const next = prev.then(op, op);
    const settled = next.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(name, settled);
    void settled.then(() => {
      if (this.locks.get(name) === settled) this.locks.delete(name);
    });
    return next;
  }
}

/** Signals the module's process group, or the process alone when it leads none. */
function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}
