import { byStartupOrder, type DesiredModule } from './manifest.ts';
import type { ModuleSpec, ModuleState } from './runtime.ts';

/**
 * What the agent does to bring the runtime to the deployment, as an ordered list: first what
 * goes away (strays, then stops in reverse startup order), then what comes up (creates, updates
 * and starts in startup order, lower first), so a module that others depend on is stopped last
 * and started first, as IoT Edge's startupOrder promises.
 */
export type PlanAction =
  | { kind: 'remove'; name: string; reason: 'stray' }
  | { kind: 'stop'; name: string }
  | { kind: 'create'; name: string; spec: ModuleSpec; start: boolean }
  /** The spec changed (image, env, createOptions, command...): stop, remove, create anew. */
  | { kind: 'recreate'; name: string; spec: ModuleSpec; start: boolean }
  | { kind: 'start'; name: string }
  /** Running but unhealthy, and its restart policy says restart: stop and start the same module. */
  | { kind: 'restart'; name: string };

export interface PlanInput {
  /** The deployment's valid modules. */
  desired: readonly DesiredModule[];
  /** What the runtime holds now. */
  states: readonly ModuleState[];
  /**
   * Names the runtime holds that must be left alone although not in `desired`: modules whose
   * new definition has a problem keep running as they are rather than being removed.
   */
  keep?: Iterable<string>;
  /**
   * Whether a module that ran and exited by itself may be started now (its restart policy and
   * back-off decide; restart-policy.ts), or a running module its health check calls unhealthy
   * be restarted now. Modules that never ran start regardless. Default: yes.
   */
  mayRestart?: (module: DesiredModule, state: ModuleState) => boolean;
}

export function planActions(input: PlanInput): PlanAction[] {
  const byName = new Map(input.states.map((s) => [s.name, s]));
  const desiredNames = new Set(input.desired.map((m) => m.name));
  const keep = new Set(input.keep ?? []);
  const mayRestart = input.mayRestart ?? (() => true);
  const going: PlanAction[] = [];
  const coming: PlanAction[] = [];

  const strays = input.states
    .map((s) => s.name)
    .filter((n) => !desiredNames.has(n) && !keep.has(n))
    .sort();
  for (const name of strays) going.push({ kind: 'remove', name, reason: 'stray' });

  const ordered = [...input.desired].sort(byStartupOrder);
  for (const m of [...ordered].reverse()) {
    const s = byName.get(m.name);
    if (m.status === 'stopped' && s?.runtimeStatus === 'running' && s.specHash === m.spec.specHash) {
      going.push({ kind: 'stop', name: m.name });
    }
  }
  for (const m of ordered) {
    const s = byName.get(m.name);
    const start = m.status === 'running';
    if (!s) {
      coming.push({ kind: 'create', name: m.name, spec: m.spec, start });
    } else if (s.specHash !== m.spec.specHash) {
      coming.push({ kind: 'recreate', name: m.name, spec: m.spec, start });
    } else if (start && s.runtimeStatus !== 'running') {
      const ranBefore = s.exitedAt !== undefined || s.exitCode !== undefined;
      if (!ranBefore || mayRestart(m, s)) coming.push({ kind: 'start', name: m.name });
    } else if (start && s.runtimeStatus === 'running' && s.health === 'unhealthy' && mayRestart(m, s)) {
      coming.push({ kind: 'restart', name: m.name });
    }
  }
  return [...going, ...coming];
}
