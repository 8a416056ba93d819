import type { RestartPolicy } from './manifest.ts';
import type { ModuleState } from './runtime.ts';

/**
 * When a module that exited by itself is started again, as IoT Edge's agent does it: the policy
 * says whether, and a cool-off that doubles with each restart (10 s, 20 s, 40 s ... up to 5
 * minutes) says when. After a number of restarts the module is `failed` and left alone; a module
 * that then runs healthy long enough starts over with a restart count of zero.
 */

export interface RestartSettings {
  /** The first cool-off; the nth restart waits unit * 2^n. IoT Edge: CoolOffTimeUnitInSeconds = 10. */
  coolOffTimeUnitSecs: number;
  /** The ceiling of the cool-off. IoT Edge: 300 s. */
  maxCoolOffSecs: number;
  /** Restarts before the module is reported `failed` and no longer restarted. IoT Edge: MaxRestartCount = 5. */
  maxRestartCount: number;
  /** A module running this long is healthy again: its restart count is reset. IoT Edge: IntensiveCareTimeInMinutes = 10. */
  intensiveCareSecs: number;
}

export const DEFAULT_RESTART_SETTINGS: Readonly<RestartSettings> = Object.freeze({
  coolOffTimeUnitSecs: 10,
  maxCoolOffSecs: 300,
  maxRestartCount: 5,
  intensiveCareSecs: 600,
});

/** What the agent remembers per module between restarts (kept with the agent's state). */
export interface RestartRecord {
  restartCount: number;
  /** Epoch ms of the last restart the agent made. */
  lastRestartTime?: number;
}

/**
 * Whether the policy restarts a module that exited with `exitCode`. `on-unhealthy` restarts a
 * failed exit too (as IoT Edge's policies are ordered: never < on-failure < on-unhealthy < always).
 */
export function policyRestarts(policy: RestartPolicy, exitCode: number | undefined): boolean {
  switch (policy) {
    case 'never':
      return false;
    case 'always':
      return true;
    case 'on-failure':
    case 'on-unhealthy':
      return exitCode !== 0;
  }
}

/** Whether the policy restarts a running module whose engine health check says unhealthy. */
export function policyRestartsUnhealthy(policy: RestartPolicy): boolean {
  return policy === 'on-unhealthy' || policy === 'always';
}

/** The cool-off before the restart that follows `restartCount` earlier restarts, in ms. */
export function coolOffMs(restartCount: number, settings: RestartSettings = DEFAULT_RESTART_SETTINGS): number {
  const secs = Math.min(settings.coolOffTimeUnitSecs * 2 ** Math.max(0, restartCount), settings.maxCoolOffSecs);
  return secs * 1000;
}

export type ModuleRunState = 'running' | 'unhealthy' | 'stopped' | 'failed' | 'backoff' | 'unknown';

export interface RestartDecision {
  runtimeStatus: ModuleRunState;
  /** For people and reported properties, e.g. "Backing off for 40 seconds". */
  statusDescription: string;
  /** Epoch ms at which to restart; set only in `backoff` and for an `unhealthy` module its policy restarts. */
  restartAt?: number;
}

/**
 * The state a module is in, given what the runtime says, its restart policy and the agent's
 * record. `stoppedByAgent` is true when the agent stopped it (status stopped, or being updated):
 * such a module is `stopped`, never backed off or failed.
 */
export function decideRestart(
  state: ModuleState,
  policy: RestartPolicy,
  record: RestartRecord,
  now: number,
  opts: { stoppedByAgent?: boolean; settings?: RestartSettings } = {},
): RestartDecision {
  const settings = opts.settings ?? DEFAULT_RESTART_SETTINGS;
  if (state.runtimeStatus === 'running') {
    const up = `Up ${humanize(now - (state.startedAt ?? now))}`;
    if (state.health !== 'unhealthy') return { runtimeStatus: 'running', statusDescription: up };
    if (!policyRestartsUnhealthy(policy)) return { runtimeStatus: 'unhealthy', statusDescription: `${up} (unhealthy)` };
    if (record.restartCount >= settings.maxRestartCount) {
      return {
        runtimeStatus: 'failed',
        statusDescription: `Unhealthy after ${record.restartCount} restarts; no longer restarted`,
      };
    }
    // The cool-off counts from its last start: a module that turns unhealthy at once is not
    // restarted faster than one that keeps exiting.
    const restartAt = (state.startedAt ?? now) + coolOffMs(record.restartCount, settings);
    const left = Math.max(0, Math.ceil((restartAt - now) / 1000));
    return {
      runtimeStatus: 'unhealthy',
      statusDescription: left > 0 ? `Unhealthy; restarting in ${left} seconds` : 'Unhealthy; restarting',
      restartAt,
    };
  }
  if (state.runtimeStatus === 'unknown') return { runtimeStatus: 'unknown', statusDescription: 'Unknown' };
  if (opts.stoppedByAgent) return { runtimeStatus: 'stopped', statusDescription: 'Stopped' };
  const exitCode = state.exitCode;
  if (!policyRestarts(policy, exitCode)) {
    if (exitCode !== undefined && exitCode !== 0) {
      return { runtimeStatus: 'failed', statusDescription: failedText(exitCode, state.exitedAt, now) };
    }
    return { runtimeStatus: 'stopped', statusDescription: exitedText(exitCode, state.exitedAt, now) };
  }
  if (record.restartCount >= settings.maxRestartCount) {
    return { runtimeStatus: 'failed', statusDescription: failedText(exitCode, state.exitedAt, now) };
  }
  const restartAt = (state.exitedAt ?? now) + coolOffMs(record.restartCount, settings);
  const left = Math.max(0, Math.ceil((restartAt - now) / 1000));
  return { runtimeStatus: 'backoff', statusDescription: `Backing off for ${left} seconds`, restartAt };
}

/** The record after the agent restarted the module at `now`. */
export function recordRestart(record: RestartRecord, now: number): RestartRecord {
  return { restartCount: record.restartCount + 1, lastRestartTime: now };
}

/** A module that has been running for the intensive-care time is healthy: its count is reset. */
export function resetIfHealthy(
  record: RestartRecord,
  state: ModuleState,
  now: number,
  settings: RestartSettings = DEFAULT_RESTART_SETTINGS,
): RestartRecord {
  if (record.restartCount === 0 || state.runtimeStatus !== 'running' || state.startedAt === undefined) return record;
  if (state.health === 'unhealthy') return record;
  if (now - state.startedAt < settings.intensiveCareSecs * 1000) return record;
  return { ...record, restartCount: 0 };
}

function failedText(exitCode: number | undefined, exitedAt: number | undefined, now: number): string {
  const code = exitCode === undefined ? '' : ` (${exitCode})`;
  return exitedAt === undefined ? `Failed${code}` : `Failed${code} ${humanize(now - exitedAt)} ago`;
}

function exitedText(exitCode: number | undefined, exitedAt: number | undefined, now: number): string {
  if (exitCode === undefined) return 'Stopped';
  return exitedAt === undefined ? `Exited (${exitCode})` : `Exited (${exitCode}) ${humanize(now - exitedAt)} ago`;
}

/** "3 seconds", "1 minute", "2 hours", "4 days": the coarse span people read in `edge list`. */
export function humanize(ms: number): string {
  const secs = Math.max(0, Math.floor(ms / 1000));
  const unit = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  if (secs < 60) return unit(secs, 'second');
  const mins = Math.floor(secs / 60);
  if (mins < 60) return unit(mins, 'minute');
  const hours = Math.floor(mins / 60);
  if (hours < 48) return unit(hours, 'hour');
  return unit(Math.floor(hours / 24), 'day');
}
