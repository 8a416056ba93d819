import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { EDGE_HUB } from '../identity/device-id.ts';
import { routeTableFromEdgeHubDesired } from '../routing/route-table.ts';
import { UserError } from '../util/errors.ts';
import { openServiceClient, withHubAccessFlags, type HubAccessFlags } from './hub-access.ts';
import { action } from './run.ts';

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Reads a deployment manifest as the seeds write it (`{"modulesContent": {"$edgeAgent":
 * {"properties.desired": ...}, "$edgeHub": {"properties.desired": {routes, ...}}}}`; a
 * `{"content": {...}}` wrapper is accepted too) and checks what can be checked before sending:
 * JSON, the shape, and that the `$edgeHub` routes compile.
 */
export function readDeployment(file: string): {
  content: Record<string, unknown>;
  modules: string[];
  routes: string[];
} {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UserError(
      `cannot read the deployment ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      'Give the path of the deployment manifest JSON with --content',
    );
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new UserError(
      `the deployment ${file} is not valid JSON: ${(err as Error).message}`,
      "Fix the JSON (the seeds' manifests are plain JSON, no comments)",
    );
  }
  const content = isObject(doc) && isObject(doc.content) && !('modulesContent' in doc) ? doc.content : doc;
  if (!isObject(content) || !isObject(content.modulesContent)) {
    throw new UserError(
      `the deployment ${file} has no "modulesContent" object`,
      'A deployment looks like {"modulesContent": {"$edgeAgent": {"properties.desired": ...}, "$edgeHub": {"properties.desired": ...}}}',
    );
  }
  const modules = Object.keys(content.modulesContent);
  let routes: string[] = [];
  const edgeHub = content.modulesContent[EDGE_HUB];
  if (isObject(edgeHub)) {
    const desired = edgeHub['properties.desired'];
    try {
      routes = routeTableFromEdgeHubDesired(desired).routes.map((r) => r.name);
    } catch (err) {
      const hint = (err as { hint?: string }).hint;
      throw new UserError(
        `the ${EDGE_HUB} routes of ${file} do not compile: ${(err as Error).message}${hint ? ` (${hint})` : ''}`,
        'Fix the route; nothing was sent to the hub',
      );
    }
  }
  return { content, modules, routes };
}

/** `strata hub set-modules --device ID --content deployment.json` (like `az iot edge set-modules`). */
export function registerSetModulesCommand(program: Command): void {
  const hub =
    program.commands.find((c) => c.name() === 'hub') ?? program.command('hub').description('run the root hub');
  withHubAccessFlags(
    hub
      .command('set-modules')
      .description(
        'apply a deployment manifest (modulesContent: $edgeAgent, $edgeHub routes and store-and-forward settings, modules) to an IoT Edge device',
      )
      .requiredOption('--device <id>', 'the IoT Edge device')
      .requiredOption('--content <file>', 'the deployment manifest (JSON with modulesContent)'),
  ).action(
    action(async (flags: HubAccessFlags & { device: string; content: string }) => {
      const { content, modules, routes } = readDeployment(flags.content);
      const client = await openServiceClient(flags);
      try {
        await client.applyConfigurationContent(flags.device, content);
      } finally {
        client.close();
      }
      process.stdout.write(
        `deployment applied to ${flags.device}: modules ${modules.join(', ')}${routes.length > 0 ? `; routes ${routes.join(', ')}` : ''}\n`,
      );
    }),
  );
}
