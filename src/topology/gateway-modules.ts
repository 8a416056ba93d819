import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { isMap, isScalar, type Node as YamlNode, type YAMLMap } from 'yaml';
import { RouteTable } from '../routing/route-table.ts';

/**
 * A gateway's own deployment in the topology file: `modules` (each a Node script its edge agent
 * runs as a process module, with IoT Edge's environment, so `ModuleClient.fromEnvironment` works
 * in it) and `routes` (its `$edgeHub` routes). Without them a gateway gets the plain deployment:
 * no modules, everything upstream.
 */

export interface TopologyModule {
  name: string;
  /** The script's absolute path (written relative to the topology file). */
  run: string;
  env: Record<string, string>;
}

/** What spec.ts's reader offers: problems with their line, a mapping's known keys, text fields. */
export interface TopologyReader {
  problem(node: YamlNode | null | undefined, message: string): void;
  entries(map: YAMLMap, known: string[], what: string): Map<string, YamlNode | null>;
  text(
    fields: Map<string, YamlNode | null>,
    key: string,
    what: string,
    owner: YamlNode,
  ): { value?: string; node?: YamlNode };
}

const MODULE_KEYS = ['run', 'env'];
/** A module id as IoT Hub takes it, without the `$` of system modules. */
const MODULE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Reads `modules:` of gateway `label`; `file` is the topology file, for relative paths. */
export function readModules(r: TopologyReader, node: YamlNode | null | undefined, label: string, file: string) {
  const out: TopologyModule[] = [];
  if (!isMap(node)) {
    r.problem(node, `${label}: modules must be a mapping of module names (modules:\\n  sensor:\\n    run: ...)`);
    return out;
  }
  for (const pair of node.items) {
    const keyNode = pair.key as YamlNode | null;
    const name = isScalar(keyNode) ? String(keyNode.value) : '';
    const what = `${label} module ${name || '?'}`;
    if (!MODULE_NAME.test(name)) {
      r.problem(
        keyNode,
        `${label}: module name "${name}" may only use letters, digits, "-", "." and "_" (at most 64): it names the module identity`,
      );
      continue;
    }
    const value = pair.value as YamlNode | null;
    if (!isMap(value)) {
      r.problem(value ?? keyNode, `${what} must be a mapping with run: (a Node script)`);
      continue;
    }
    const fields = r.entries(value, MODULE_KEYS, what);
    const run = r.text(fields, 'run', what, keyNode ?? value);
    const env: Record<string, string> = {};
    const envNode = fields.get('env');
    if (fields.has('env')) {
      if (!isMap(envNode)) r.problem(envNode ?? value, `${what}: env must be a mapping of NAME: value`);
      else
        for (const e of envNode.items) {
          const k = isScalar(e.key) ? String(e.key.value) : '';
          const v = e.value as YamlNode | null;
          if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
            r.problem(e.key as YamlNode, `${what}: env name "${k}" is not valid`);
          else if (!isScalar(v) || v.value === null || typeof v.value === 'object')
            r.problem(v ?? (e.key as YamlNode), `${what}: env ${k} must be a plain value`);
          else env[k] = String(v.value);
        }
    }
    if (run.value === undefined) continue;
    const path = resolve(dirname(file), run.value);
    if (!existsSync(path)) {
      r.problem(run.node, `${what}: run: ${path} does not exist (a path is relative to the topology file)`);
      continue;
    }
    out.push({ name, run: path, env });
  }
  return out;
}

/** Reads `routes:` of gateway `label`: a mapping of route names to route texts, each compiled as the gateway will. */
export function readRoutes(r: TopologyReader, node: YamlNode | null | undefined, label: string) {
  const out: Record<string, string> = {};
  if (!isMap(node)) {
    r.problem(node, `${label}: routes must be a mapping of route names to routes (name: FROM ... INTO ...)`);
    return out;
  }
  for (const pair of node.items) {
    const k = isScalar(pair.key) ? String(pair.key.value) : '';
    const v = pair.value as YamlNode | null;
    if (!isScalar(v) || typeof v.value !== 'string' || v.value.trim() === '')
      r.problem(v ?? (pair.key as YamlNode), `${label}: route "${k}" must be a route text (FROM ... INTO ...)`);
    else {
      try {
        RouteTable.fromDefinitions([{ name: k, route: v.value }]);
        out[k] = v.value.trim();
      } catch (err) {
        r.problem(v, `${label}: ${(err as Error).message.split('\n')[0]}`);
      }
    }
  }
  return out;
}

/** The parts of a deployment manifest this file changes. */
interface DeploymentShape {
  modulesContent: {
    $edgeAgent: { 'properties.desired': { modules: Record<string, unknown> } };
    $edgeHub: { 'properties.desired': { routes: Record<string, string> } };
  };
}

/**
 * `base` (the topology's plain deployment) with gateway `g`'s modules as `process` modules run
 * by `node` (restarted always) and its routes in place of the base routes, when it has them.
 */
export function gatewayDeployment<T extends DeploymentShape>(
  base: T,
  g: { modules?: TopologyModule[]; routes?: Record<string, string> },
  node = process.execPath,
): T {
  const out: DeploymentShape = structuredClone(base);
  const agent = out.modulesContent.$edgeAgent['properties.desired'];
  const hub = out.modulesContent.$edgeHub['properties.desired'];
  for (const m of g.modules ?? [])
    agent.modules[m.name] = {
      version: '1.0',
      type: 'process',
      status: 'running',
      restartPolicy: 'always',
      settings: { command: node, args: [m.run], cwd: dirname(m.run) },
      env: Object.fromEntries(Object.entries(m.env).map(([k, v]) => [k, { value: v }])),
    };
  if (g.routes) hub.routes = { ...g.routes };
  return out as T;
}
