import fs from 'node:fs';

/**
 * Telling whether a recorded pid is still the process the agent started. A pid alone is not
 * enough: after the module exits (while no agent watched) the kernel may hand the same number to
 * an unrelated process, and the agent must neither report it as the module nor signal it. On
 * Linux the process start time (field 22 of /proc/PID/stat, clock ticks since boot) tells them
 * apart; elsewhere only liveness is known.
 */
export interface ProcessRecord {
  pid: number;
  /** /proc/PID/stat starttime when the process was started; absent where /proc is not there. */
  startTime?: string;
}

export interface ProcStat {
  /** One letter: R, S, D, Z (zombie), X (dead), T, ... */
  state: string;
  /** The process group (field 5). */
  pgrp: number;
  startTime: string;
}

/**
 * Reads the state and start time out of a /proc/PID/stat line. The command name (field 2) is in
 * parentheses and may itself hold spaces and parentheses, so fields are counted after the last ')'.
 */
export function parseProcStat(text: string): ProcStat | undefined {
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  // After ')': field 3 (state) is the first, field 22 (starttime) the 20th.
  const fields = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  const state = fields[0];
  const pgrp = Number(fields[2]);
  const startTime = fields[19];
  if (!state || !Number.isInteger(pgrp) || !startTime || !/^\d+$/.test(startTime)) return undefined;
  return { state, pgrp, startTime };
}

/** The process's stat, or undefined when it is gone or /proc cannot be read. */
export function readProcStat(pid: number): ProcStat | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    return parseProcStat(fs.readFileSync(`/proc/${pid}/stat`, 'latin1'));
  } catch {
    return undefined;
  }
}

/** The start time to record for a process just started (undefined off Linux, or when it is already gone). */
export function processStartTime(pid: number): string | undefined {
  return readProcStat(pid)?.startTime;
}

/** True when `pid` exists at all (a zombie counts; see isSameProcess). */
export function pidExists(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * True when the recorded process is alive and is the one recorded: same pid, not a zombie
 * waiting for a parent that no longer reaps it, and (where known) the same start time.
 */
export function isSameProcess(rec: ProcessRecord, stat: (pid: number) => ProcStat | undefined = readProcStat): boolean {
  if (!pidExists(rec.pid)) return false;
  if (process.platform !== 'linux') return true;
  const now = stat(rec.pid);
  if (!now) return false; // exited between the two looks
  if (now.state === 'Z' || now.state === 'X') return false;
  return rec.startTime === undefined || rec.startTime === now.startTime;
}

/**
 * The leader of the process group started with `NAME=VALUE` in its environment, found through
 * /proc (Linux only; the same user's processes only). It finds a module whose start the agent
 * did not live to record: the variable is set before spawning and survives in the process.
 */
export function findByEnvironment(name: string, value: string): ProcessRecord | undefined {
  if (process.platform !== 'linux') return undefined;
  const needle = Buffer.from(`${name}=${value}\0`);
  let pids: string[];
  try {
    pids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    return undefined;
  }
  for (const dir of pids) {
    const pid = Number(dir);
    let environ: Buffer;
    try {
      environ = fs.readFileSync(`/proc/${dir}/environ`);
    } catch {
      continue; // another user's, or gone
    }
    if (!environ.includes(needle)) continue;
    const stat = readProcStat(pid);
    // The module's own children inherit the variable; the module leads the group.
    if (!stat || stat.pgrp !== pid || stat.state === 'Z' || stat.state === 'X') continue;
    return { pid, startTime: stat.startTime };
  }
  return undefined;
}
