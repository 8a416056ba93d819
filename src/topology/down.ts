import { removeProcessModules } from '../edge/agent-host.ts';
import { UserError } from '../util/errors.ts';
import { stopProcesses } from './processes.ts';
import { readState, topologyPaths, type ProcessRecord, type TopologyState } from './state.ts';

/**
 * `strata topology down`: the sensors first (so nothing is sent into a stopping gateway), then
 * the gateways from the bottom layer up, then the hub. Each group gets SIGTERM and, after the
 * grace period, SIGKILL. A gateway's process modules outlive it (a gateway started again adopts
 * them), so they are ended once it has stopped.
 */

export interface DownReport {
  /** Node names, grouped by how they ended. */
  stopped: string[];
  killed: string[];
  notRunning: string[];
}

export function requireState(dir: string): TopologyState {
  const state = readState(dir);
  if (!state) {
    throw new UserError(
      `there is no topology in ${topologyPaths(dir).root}`,
      'Start one with `strata topology up FILE`, or pass the --dir it was started with',
    );
  }
  return state;
}

export async function topologyDown(
  dir: string,
  graceMs = 10_000,
  say: (line: string) => void = () => undefined,
): Promise<DownReport> {
  const state = requireState(dir);
  const report: DownReport = { stopped: [], killed: [], notRunning: [] };
  const groups: Array<Array<{ name: string; record: ProcessRecord }>> = [
    state.sensors.map((s) => ({ name: `sensor ${s.id}`, record: s })),
  ];
  const layers = [...new Set(state.gateways.map((g) => g.layer))].sort((a, b) => b - a);
  for (const layer of layers)
    groups.push(state.gateways.filter((g) => g.layer === layer).map((g) => ({ name: `gateway ${g.id}`, record: g })));
  groups.push([{ name: 'hub', record: state.hub }]);

  const gatewayOf = new Map(state.gateways.map((g) => [g as ProcessRecord, g]));
  for (const group of groups) {
    if (group.length === 0) continue;
    const results = await stopProcesses(
      group.map((g) => g.record),
      graceMs,
    );
    results.forEach((r, i) => {
      const name = group[i]!.name;
      if (r.notRunning) report.notRunning.push(name);
      else if (r.killed) {
        report.killed.push(name);
        say(`${name}: did not stop within ${Math.round(graceMs / 1000)} s, killed`);
      } else {
        report.stopped.push(name);
        say(`${name}: stopped`);
      }
    });
    for (const g of group) {
      const gateway = gatewayOf.get(g.record);
      if (!gateway) continue;
      const ended = await removeProcessModules(gateway.dataDir).catch((err: Error) => {
        say(`${g.name}: could not end its modules: ${err.message}`);
        return [];
      });
      if (ended.length > 0) say(`${g.name}: modules ${ended.join(', ')} ended`);
    }
  }
  return report;
}
