import { existsSync, readFileSync } from 'node:fs';
import type { TwinCollection } from '../model/twin.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { childLog } from '../util/log.ts';
import type { RestartRecord } from './restart-policy.ts';

/**
 * What the agent keeps on disk between runs: the last `$edgeAgent` desired properties it read
 * (so a restarted agent whose parent is away still runs the deployment), the restart bookkeeping
 * (so a crash does not reset back-off), and the modules it stopped itself (not failures).
 */

const log = childLog('agent');

export interface AgentStateFile {
  desired?: TwinCollection;
  restarts: Record<string, RestartRecord>;
  agentStopped: string[];
}

export function readAgentState(path: string): AgentStateFile {
  const empty: AgentStateFile = { restarts: {}, agentStopped: [] };
  if (!existsSync(path)) return empty;
  try {
    const s = JSON.parse(readFileSync(path, 'utf8')) as Partial<AgentStateFile>;
    return {
      desired: typeof s.desired === 'object' && s.desired !== null ? s.desired : undefined,
      restarts: typeof s.restarts === 'object' && s.restarts !== null ? s.restarts : {},
      agentStopped: Array.isArray(s.agentStopped) ? s.agentStopped.filter((x) => typeof x === 'string') : [],
    };
  } catch (err) {
    log.warn({ file: path, err: (err as Error).message }, 'the agent state file is unreadable; starting afresh');
    return empty;
  }
}

export function writeAgentState(path: string, state: AgentStateFile): void {
  try {
    // The desired properties may carry registry passwords: owner only.
    writeFileAtomic(path, `${JSON.stringify(state)}\n`, 0o600);
  } catch (err) {
    log.warn({ file: path, err: (err as Error).message }, 'could not keep the agent state on disk');
  }
}
