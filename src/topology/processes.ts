import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ProcessRecord } from './state.ts';

/**
 * The nodes of a topology run as separate `strata` processes, detached so they outlive the
 * `up` command and a Ctrl-C typed into its terminal: `down` (or `up --watch` on Ctrl-C) stops
 * them by pid.
 */

const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

export interface Spawned {
  pid: number;
  /** Resolves with the exit code (or signal) if the process ends while this process watches it. */
  exited: Promise<string>;
  hasExited(): boolean;
}

/** Starts `strata ARGS` detached, its stdout and stderr appended to `logFile`. */
export function spawnStrata(args: string[], logFile: string, env: Record<string, string> = {}): Spawned {
  mkdirSync(dirname(logFile), { recursive: true });
  const out = openSync(logFile, 'a');
  try {
    const child = spawn(process.execPath, [STRATA_BIN, ...args], {
      detached: true,
      stdio: ['ignore', out, out],
      env: { ...process.env, ...env },
    });
    let done: string | undefined;
    const exited = new Promise<string>((resolve) => {
      child.once('exit', (code, signal) => {
        done = signal ? `killed by ${signal}` : `exit code ${code}`;
        resolve(done);
      });
      child.once('error', (err) => {
        done = `could not start: ${err.message}`;
        resolve(done);
      });
    });
    child.unref();
    if (child.pid === undefined) throw new Error(`could not start strata ${args[0] ?? ''}`);
    return { pid: child.pid, exited, hasExited: () => done !== undefined };
  } finally {
    closeSync(out);
  }
}

function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

function commandLine(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return undefined;
  }
}

/** Whether `pid` is a live (not zombie) process at all. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return procState(pid) !== 'Z';
}

/**
 * Whether the recorded process is still running: its pid is alive and, where /proc tells,
 * its command line still carries the marker (a pid reused by some other program does not).
 */
export function isRunning(record: ProcessRecord): boolean {
  if (!record.pid || !pidAlive(record.pid)) return false;
  const cmd = commandLine(record.pid);
  return cmd === undefined || cmd.includes(record.marker);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface StopResult {
  /** Already gone before the signal. */
  notRunning: boolean;
  killed: boolean;
}

/**
 * Stops the processes together: SIGTERM, then SIGKILL for those still running after
 * `graceMs`. Resolves once every one is gone.
 */
export async function stopProcesses(records: ProcessRecord[], graceMs: number): Promise<StopResult[]> {
  const results: StopResult[] = records.map(() => ({ notRunning: false, killed: false }));
  const live: number[] = [];
  records.forEach((r, i) => {
    if (!isRunning(r)) {
      results[i]!.notRunning = true;
      return;
    }
    try {
      process.kill(r.pid!, 'SIGTERM');
      live.push(i);
    } catch {
      results[i]!.notRunning = true;
    }
  });
  const deadline = Date.now() + graceMs;
  let waiting = live;
  while (waiting.length > 0 && Date.now() < deadline) {
    await sleep(50);
    waiting = waiting.filter((i) => pidAlive(records[i]!.pid!));
  }
  for (const i of waiting) {
    try {
      process.kill(records[i]!.pid!, 'SIGKILL');
      results[i]!.killed = true;
    } catch {
      // it went away between the check and the signal
    }
  }
  const hardDeadline = Date.now() + 5000;
  while (waiting.length > 0 && Date.now() < hardDeadline) {
    await sleep(50);
    waiting = waiting.filter((i) => pidAlive(records[i]!.pid!));
  }
  return results;
}

/** The last lines of a log file, for an error message about a node that failed to start. */
export function logTail(file: string, lines = 15): string {
  try {
    const text = readFileSync(file, 'utf8').trimEnd();
    return text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}
