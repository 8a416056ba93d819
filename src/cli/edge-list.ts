import type { Command } from 'commander';
import { UserError } from '../util/errors.ts';
import { localGateway, localRequest, withLocalFlags, type LocalFlags } from './edge-local.ts';
import { action } from './run.ts';

interface ListFlags extends LocalFlags {
  json?: boolean;
}

interface AgentModule {
  name: string;
  runtimeStatus: string;
  statusDescription: string;
  image: string;
}

interface HealthAnswer {
  deviceId: string;
  hostname: string;
  modules?: string[];
  agentModules?: AgentModule[];
  connected?: Array<{ deviceId: string; moduleId?: string; protocol: string }>;
  upstream?: { parent: string; connected: boolean };
}

/** Columns padded to their widest cell, as `iotedge list` prints them. */
function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3)))
      .join('')
      .trimEnd(),
  );
}

/** `strata edge list`: the gateway's modules and the downstream identities connected to it now. */
export function registerEdgeListCommand(edge: Command | undefined): void {
  if (!edge) throw new Error('the edge command group must be registered before edge list');
  withLocalFlags(
    edge
      .command('list')
      .description(
        "list the gateway's modules (name, status, description, image, as `iotedge list`) and the downstream devices and modules connected to it now",
      ),
  )
    .option('--json', 'print JSON for scripts')
    .action(
      action(async (flags: ListFlags) => {
        const gw = localGateway(flags);
        const res = await localRequest(gw, 'GET', '/health', { timeoutMs: 3000 });
        let health: HealthAnswer;
        try {
          health = JSON.parse(res.text) as HealthAnswer;
        } catch {
          throw new UserError(`the gateway answered /health with something other than JSON (status ${res.status})`);
        }
        if (flags.json) {
          process.stdout.write(
            `${JSON.stringify(
              {
                deviceId: health.deviceId,
                modules: health.modules ?? [],
                ...(health.agentModules ? { agentModules: health.agentModules } : {}),
                connected: health.connected ?? [],
              },
              null,
              2,
            )}\n`,
          );
          return;
        }
        const lines = [
          `gateway ${health.deviceId} (${health.hostname}), upstream ${health.upstream?.parent ?? '?'}: ${health.upstream?.connected ? 'connected' : 'not connected'}`,
          '',
        ];
        if (health.agentModules) {
          const rows = [['NAME', 'STATUS', 'DESCRIPTION', 'IMAGE']];
          for (const m of health.agentModules) rows.push([m.name, m.runtimeStatus, m.statusDescription, m.image]);
          lines.push(...table(rows), '');
        }
        lines.push('MODULE IDENTITIES');
        for (const m of health.modules ?? []) lines.push(`  ${m}`);
        lines.push('', `CONNECTED (${health.connected?.length ?? 0})`);
        for (const c of health.connected ?? [])
          lines.push(`  ${c.moduleId ? `${c.deviceId}/${c.moduleId}` : c.deviceId}  ${c.protocol}`);
        process.stdout.write(`${lines.join('\n')}\n`);
      }),
    );
}
