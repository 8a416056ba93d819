import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { AgentManifestError, formatProblem, readAgentDesired } from '../agent/manifest.ts';
import { EDGE_AGENT, EDGE_HUB } from '../identity/device-id.ts';
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
 * JSON, the shape, that the `$edgeHub` routes compile and that every `$edgeAgent` module is one
 * the agent can run. The hub itself stores a deployment with a bad module (as IoT Hub does): the
 * device's agent then runs the others and names the bad one in `lastDesiredStatus`.
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
  const edgeAgent = content.modulesContent[EDGE_AGENT];
  if (edgeAgent !== undefined) checkEdgeAgent(file, edgeAgent);
  return { content, modules, routes };
}

/** Refuses a `$edgeAgent` manifest the agent would not run in full, naming each module and field. */
function checkEdgeAgent(file: string, edgeAgent: unknown): void {
  const desired = isObject(edgeAgent) ? edgeAgent['properties.desired'] : undefined;
  let problems: string[];
  try {
    // The parent is known only on the device; any name lets `$upstream` images pass here.
    problems = readAgentDesired(desired, { parentHostname: 'parent' }).problems.map(formatProblem);
  } catch (err) {
    if (!(err instanceof AgentManifestError)) throw err;
    const field = err.field ? `"properties.desired".${err.field}` : '"properties.desired"';
    problems = [`${field}: ${err.status === 417 ? 'is empty (give schemaVersion, runtime and modules)' : err.message}`];
  }
  if (problems.length > 0) {
    throw new UserError(
      `the ${EDGE_AGENT} part of ${file} is not a deployment the agent can run: ${problems.join('; ')}`,
      'Fix the named fields; nothing was sent to the hub',
    );
  }
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
