import { Command, Option } from 'commander';
import { action } from './run.ts';
import { openHubAccess, withHubAccessFlags, type HubAccessFlags } from './hub-access.ts';
import { UserError } from '../util/errors.ts';
import { formatConnectionString } from '../identity/connection-string.ts';
import { deviceIdProblem, moduleIdProblem } from '../identity/device-id.ts';
import {
  ServiceClient, ServiceError,
  type DeviceJson, type ModuleJson, type TwinJson,
} from '../hub/service-client.ts';

/**
 * `strata device ...`: identities and the parent/child hierarchy, as the seeds' CLI offers them.
 * The hub enforces the hierarchy rules; the checks here exist to explain a refusal in the
 * user's terms before the hub says no.
 */

/** IoT Edge allows at most this many layers of edge devices, the top one included. */
const MAX_EDGE_LAYERS = 5;

interface HubFlags extends HubAccessFlags {
  json?: boolean;
}

function withHubFlags(cmd: Command): Command {
  return withHubAccessFlags(cmd).option('--json', 'print JSON for scripts instead of tables');
}

// ---------------------------------------------------------------------------------------------
// Reaching the hub

interface Hub {
  client: ServiceClient;
  /** HostName for device connection strings, as the service connection string names the hub. */
  hostName: string;
}

async function openHub(flags: HubFlags): Promise<Hub> {
  return openHubAccess(flags);
}

/** Opens the hub, runs `fn`, and always lets go of the connection so the process can exit. */
async function withHub(flags: HubFlags, fn: (hub: Hub) => Promise<void>): Promise<void> {
  const hub = await openHub(flags);
  try {
    await fn(hub);
  } finally {
    hub.client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Output

function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

function emit(flags: HubFlags, json: unknown, human: () => string): void {
  out(flags.json ? JSON.stringify(json, null, 2) : human());
}

function table(headers: string[], rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

function keyValues(pairs: Array<[string, string | undefined]>): string {
  const shown = pairs.filter(([, v]) => v !== undefined && v !== '') as Array<[string, string]>;
  const width = Math.max(...shown.map(([k]) => k.length));
  return shown.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}

const yesNo = (b: boolean | undefined) => (b ? 'yes' : 'no');

// ---------------------------------------------------------------------------------------------
// Ids, auth and JSON input

function checkDeviceId(id: string): string {
  const problem = deviceIdProblem(id);
  if (problem) throw new UserError(problem);
  return id;
}

function checkModuleId(id: string): string {
  const problem = moduleIdProblem(id);
  if (problem) throw new UserError(problem);
  return id;
}

function idList(text: string, flag: string): string[] {
  const ids = text.split(',').map((s) => s.trim()).filter(Boolean);
  if (ids.length === 0) throw new UserError(`${flag} names no devices`, `Write ${flag} a,b,c`);
  return [...new Set(ids.map(checkDeviceId))];
}

type AuthChoice = 'sas' | 'x509-thumbprint' | 'x509-ca';

interface AuthFlags {
  auth: AuthChoice;
  primaryThumbprint?: string;
  secondaryThumbprint?: string;
}

function withAuthFlags(cmd: Command): Command {
  return cmd
    .addOption(new Option('--auth <type>', 'how the identity authenticates').choices(['sas', 'x509-thumbprint', 'x509-ca']).default('sas'))
    .option('--primary-thumbprint <hex>', 'SHA-1 or SHA-256 thumbprint of the certificate (x509-thumbprint)')
    .option('--secondary-thumbprint <hex>', 'thumbprint of a second certificate (x509-thumbprint)');
}

function thumbprint(value: string | undefined, flag: string): string | undefined {
  if (value === undefined) return undefined;
  const hex = value.replace(/:/g, '');
  if (!/^(?:[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$/.test(hex)) {
    throw new UserError(`${flag} "${value}" is not a certificate thumbprint`, 'Give 40 (SHA-1) or 64 (SHA-256) hex digits');
  }
  return hex.toUpperCase();
}

function authentication(flags: AuthFlags): NonNullable<DeviceJson['authentication']> {
  const primary = thumbprint(flags.primaryThumbprint, '--primary-thumbprint');
  const secondary = thumbprint(flags.secondaryThumbprint, '--secondary-thumbprint');
  if (flags.auth !== 'x509-thumbprint' && (primary || secondary)) {
    throw new UserError('thumbprints only go with --auth x509-thumbprint');
  }
  switch (flags.auth) {
    case 'sas':
      return { type: 'sas', symmetricKey: { primaryKey: '', secondaryKey: '' } };
    case 'x509-thumbprint':
      if (!primary) throw new UserError('--auth x509-thumbprint needs --primary-thumbprint', "Give the SHA-1 or SHA-256 thumbprint of the device's certificate");
      return { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: primary, secondaryThumbprint: secondary ?? primary } };
    case 'x509-ca':
      return { type: 'certificateAuthority', x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null } };
  }
}

function authLabel(a: DeviceJson['authentication']): string {
  switch (a?.type) {
    case 'sas': return 'sas';
    case 'selfSigned': return 'x509-thumbprint';
    case 'certificateAuthority': return 'x509-ca';
    default: return a?.type ?? 'none';
  }
}

function jsonObject(text: string, flag: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UserError(`${flag} is not valid JSON: ${(err as Error).message}`, `Quote it for the shell, e.g. ${flag} '{"key": 1}'`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new UserError(`${flag} must be a JSON object`, `e.g. ${flag} '{"key": 1}'`);
  }
  return value as Record<string, unknown>;
}

/** A string literal for the query language. */
function quote(s: string): string {
  return `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

// ---------------------------------------------------------------------------------------------
// The hierarchy, seen from the CLI

const isEdge = (d: { capabilities?: { iotEdge?: boolean } }) => d.capabilities?.iotEdge === true;

/** The scope of a device's parent: its parentScopes, or for a leaf its deviceScope. */
function parentScopeOf(d: DeviceJson | TwinJson): string | undefined {
  const ps = d.parentScopes?.find(Boolean);
  if (ps) return ps;
  if (!isEdge(d) && d.deviceScope) return d.deviceScope;
  return undefined;
}

/** The edge devices of the hub, by scope: enough to walk up and down the hierarchy. */
class EdgeMap {
  private readonly byScope = new Map<string, TwinJson>();

  private constructor(twins: TwinJson[]) {
    for (const t of twins) if (t.deviceScope) this.byScope.set(t.deviceScope, t);
  }

  static async load(client: ServiceClient): Promise<EdgeMap> {
    return new EdgeMap(await client.query('SELECT * FROM devices WHERE capabilities.iotEdge = true'));
  }

  idOf(scope: string): string | undefined {
    return this.byScope.get(scope)?.deviceId;
  }

  /** Ids from the device owning `scope` up to the top of its hierarchy. */
  chainFrom(scope: string): string[] {
    const chain: string[] = [];
    const seen = new Set<string>();
    let cur = this.byScope.get(scope);
    while (cur && !seen.has(cur.deviceId)) {
      seen.add(cur.deviceId);
      chain.push(cur.deviceId);
      const up = parentScopeOf(cur);
      cur = up ? this.byScope.get(up) : undefined;
    }
    return chain;
  }

  /** Layers of edge devices in the subtree under (and including) the edge device with `scope`. */
  height(scope: string, seen = new Set<string>()): number {
    if (seen.has(scope)) return 0;
    seen.add(scope);
    let below = 0;
    for (const t of this.byScope.values()) {
      if (t.deviceScope && parentScopeOf(t) === scope) below = Math.max(below, this.height(t.deviceScope, seen));
    }
    return 1 + below;
  }
}

async function getEdge(client: ServiceClient, id: string, role: string): Promise<DeviceJson> {
  const d = await client.getDevice(checkDeviceId(id));
  if (!isEdge(d)) {
    throw new UserError(`only IoT Edge devices can be ${role}: ${id} is not an IoT Edge device`, 'Create parents with `strata device create ID --edge`');
  }
  if (!d.deviceScope) throw new UserError(`IoT Edge device ${id} has no device scope`, 'The hub should have given it one; recreate the device');
  return d;
}

/**
 * Checks that `child` may go under `parent`. Returns false when it already is there (nothing
 * to do), throws a UserError explaining why not, else returns true.
 */
function checkMove(child: DeviceJson, parent: DeviceJson, force: boolean, edges: EdgeMap): boolean {
  const parentScope = parent.deviceScope!;
  if (child.deviceId === parent.deviceId) throw new UserError(`device ${child.deviceId} cannot be its own parent`);
  const current = parentScopeOf(child);
  if (current === parentScope) return false;
  if (current && !force) {
    const name = edges.idOf(current) ?? current;
    throw new UserError(`device ${child.deviceId} already has parent ${name}; use --force to move it`);
  }
  if (isEdge(child)) {
    const chain = edges.chainFrom(parentScope);
    const at = chain.indexOf(child.deviceId);
    if (at >= 0) {
      const path = chain.slice(0, at + 1).reverse().join(' > ');
      throw new UserError(`cannot make ${parent.deviceId} the parent of ${child.deviceId}: ${parent.deviceId} is below it (${path}), so that would make a cycle`);
    }
    const layers = chain.length + edges.height(child.deviceScope ?? '');
    if (layers > MAX_EDGE_LAYERS) {
      throw new UserError(
        `cannot make ${parent.deviceId} the parent of ${child.deviceId}: that would make ${layers} layers of IoT Edge devices, at most ${MAX_EDGE_LAYERS} are allowed`,
      );
    }
  }
  return true;
}

/** Writes the new parent (or none) into the identity, guarded by its etag. */
async function setParentScope(client: ServiceClient, child: DeviceJson, scope: string | undefined): Promise<DeviceJson> {
  const updated: DeviceJson = { ...child, parentScopes: scope ? [scope] : [] };
  // A leaf lives in its parent's scope; an edge device keeps the scope it was born with.
  if (!isEdge(child)) updated.deviceScope = scope ?? '';
  return client.updateDevice(updated, child.etag ?? '*');
}

async function childrenOf(client: ServiceClient, parent: DeviceJson): Promise<TwinJson[]> {
  const rows = await client.query(`SELECT * FROM devices WHERE ARRAY_CONTAINS(parentScopes, ${quote(parent.deviceScope!)})`);
  return rows.sort((a, b) => a.deviceId.localeCompare(b.deviceId));
}

async function parentIdOf(client: ServiceClient, d: DeviceJson): Promise<string | undefined> {
  const scope = parentScopeOf(d);
  if (!scope) return undefined;
  const owners = await client.query(`SELECT * FROM devices WHERE deviceScope = ${quote(scope)} AND capabilities.iotEdge = true`);
  if (owners.length === 0) {
    throw new UserError(`the parent scope of ${d.deviceId} (${scope}) belongs to no IoT Edge device`, `Was the parent deleted? Set a new one with \`strata device set-parent ${d.deviceId} --parent P --force\``);
  }
  return owners[0]!.deviceId;
}

// ---------------------------------------------------------------------------------------------
// Commands

function describeDevice(d: DeviceJson, parent: string | undefined): string {
  return keyValues([
    ['deviceId', d.deviceId],
    ['edge', yesNo(isEdge(d))],
    ['status', d.status],
    ['authentication', authLabel(d.authentication)],
    ['parent', parent ?? '-'],
    ['deviceScope', d.deviceScope],
    ['parentScopes', d.parentScopes?.length ? d.parentScopes.join(', ') : undefined],
    ['connectionState', d.connectionState],
    ['generationId', d.generationId],
    ['etag', d.etag],
  ]);
}

function registerIdentityCommands(device: Command): void {
  withAuthFlags(withHubFlags(device.command('create <id>')))
    .description('create a device identity (keys are generated for sas)')
    .option('--edge', 'make it an IoT Edge device (it can then be a parent)')
    .option('--parent <id>', 'IoT Edge device to put it under')
    .action(action(async (id: string, flags: HubFlags & AuthFlags & { edge?: boolean; parent?: string }) => {
      checkDeviceId(id);
      const auth = authentication(flags);
      await withHub(flags, async ({ client }) => {
        const body: DeviceJson = { deviceId: id, status: 'enabled', authentication: auth, capabilities: { iotEdge: !!flags.edge } };
        if (flags.parent !== undefined) {
          const parent = await getEdge(client, flags.parent, 'parents');
          const scope = parent.deviceScope!;
          if (flags.edge) {
            const edges = await EdgeMap.load(client);
            const layers = edges.chainFrom(scope).length + 1;
            if (layers > MAX_EDGE_LAYERS) {
              throw new UserError(`cannot put IoT Edge device ${id} under ${parent.deviceId}: that would make ${layers} layers of IoT Edge devices, at most ${MAX_EDGE_LAYERS} are allowed`);
            }
            body.parentScopes = [scope];
          } else {
            body.deviceScope = scope;
            body.parentScopes = [scope];
          }
        }
        const created = await client.createDevice(body);
        emit(flags, created, () => `created ${isEdge(created) ? 'IoT Edge device' : 'device'} ${created.deviceId}\n${describeDevice(created, flags.parent)}`);
      });
    }));

  withHubFlags(device.command('show <id>'))
    .description('show a device identity')
    .action(action(async (id: string, flags: HubFlags) => {
      await withHub(flags, async ({ client }) => {
        const d = await client.getDevice(checkDeviceId(id));
        if (flags.json) return emit(flags, d, () => '');
        const parent = await parentIdOf(client, d).catch((err: unknown) => {
          if (err instanceof UserError && !(err instanceof ServiceError)) return '(unknown: the parent scope belongs to no device)';
          throw err;
        });
        out(describeDevice(d, parent));
      });
    }));

  withHubFlags(device.command('list'))
    .description('list device identities')
    .option('--edge', 'only IoT Edge devices')
    .action(action(async (flags: HubFlags & { edge?: boolean }) => {
      await withHub(flags, async ({ client }) => {
        const all = (await client.listDevices()).sort((a, b) => a.deviceId.localeCompare(b.deviceId));
        const shown = flags.edge ? all.filter(isEdge) : all;
        const scopeOwner = new Map(all.filter((d) => isEdge(d) && d.deviceScope).map((d) => [d.deviceScope!, d.deviceId]));
        emit(flags, shown, () => {
          if (shown.length === 0) return flags.edge ? 'no IoT Edge devices' : 'no devices';
          return table(
            ['DEVICE', 'EDGE', 'STATUS', 'AUTH', 'PARENT', 'CONNECTION'],
            shown.map((d) => {
              const ps = parentScopeOf(d);
              return [d.deviceId, yesNo(isEdge(d)), d.status ?? '', authLabel(d.authentication), ps ? scopeOwner.get(ps) ?? '?' : '-', d.connectionState ?? ''];
            }),
          );
        });
      });
    }));

  withHubFlags(device.command('delete <id>'))
    .description('delete a device identity (its children are left without a parent)')
    .action(action(async (id: string, flags: HubFlags) => {
      await withHub(flags, async ({ client }) => {
        const d = await client.getDevice(checkDeviceId(id));
        const before = isEdge(d) && d.deviceScope ? (await childrenOf(client, d)).map((c) => c.deviceId) : [];
        const { orphaned } = await client.deleteDevice(id, d.etag ?? '*');
        const orphans = (orphaned ?? before).sort();
        emit(flags, { deleted: id, orphanedChildren: orphans }, () =>
          orphans.length ? `deleted ${id}; these devices no longer have a parent: ${orphans.join(', ')}` : `deleted ${id}`);
      });
    }));
}

function registerHierarchyCommands(device: Command): void {
  withHubFlags(device.command('set-parent <id>'))
    .description('put a device under an IoT Edge parent')
    .requiredOption('--parent <id>', 'the IoT Edge device to become the parent')
    .option('--force', 'move the device even if it already has another parent')
    .action(action(async (id: string, flags: HubFlags & { parent: string; force?: boolean }) => {
      await withHub(flags, async ({ client }) => {
        const parent = await getEdge(client, flags.parent, 'parents');
        const child = await client.getDevice(checkDeviceId(id));
        const edges = await EdgeMap.load(client);
        const changed = checkMove(child, parent, !!flags.force, edges);
        const result = changed ? await setParentScope(client, child, parent.deviceScope) : child;
        emit(flags, result, () => (changed ? `${id} now has parent ${parent.deviceId}` : `${id} already has parent ${parent.deviceId}`));
      });
    }));

  withHubFlags(device.command('get-parent <id>'))
    .description("print a device's parent")
    .action(action(async (id: string, flags: HubFlags) => {
      await withHub(flags, async ({ client }) => {
        const d = await client.getDevice(checkDeviceId(id));
        const parent = await parentIdOf(client, d);
        emit(flags, { deviceId: id, parentId: parent ?? null }, () => parent ?? `${id} has no parent`);
      });
    }));

  withHubFlags(device.command('add-children <parent>'))
    .description('put devices under an IoT Edge parent')
    .requiredOption('--children <ids>', 'comma-separated device ids')
    .option('--force', 'move devices that already have another parent')
    .action(action(async (parentId: string, flags: HubFlags & { children: string; force?: boolean }) => {
      const ids = idList(flags.children, '--children');
      await withHub(flags, async ({ client }) => {
        const parent = await getEdge(client, parentId, 'parents');
        const edges = await EdgeMap.load(client);
        const children = await Promise.all(ids.map((c) => client.getDevice(c)));
        // Check every child before changing any, so a refusal leaves nothing half done.
        const moves = children.filter((c) => checkMove(c, parent, !!flags.force, edges));
        for (const c of moves) await setParentScope(client, c, parent.deviceScope);
        emit(flags, { parentId: parent.deviceId, added: moves.map((c) => c.deviceId), unchanged: children.filter((c) => !moves.includes(c)).map((c) => c.deviceId) }, () =>
          moves.length ? `added ${moves.map((c) => c.deviceId).join(', ')} as children of ${parent.deviceId}` : `nothing to do: already children of ${parent.deviceId}`);
      });
    }));

  withHubFlags(device.command('list-children <parent>'))
    .description('list the devices directly under an IoT Edge device')
    .action(action(async (parentId: string, flags: HubFlags) => {
      await withHub(flags, async ({ client }) => {
        const parent = await getEdge(client, parentId, 'parents');
        const children = await childrenOf(client, parent);
        emit(flags, children.map((c) => c.deviceId), () => children.length
          ? table(['DEVICE', 'EDGE', 'STATUS'], children.map((c) => [c.deviceId, yesNo(isEdge(c)), c.status ?? '']))
          : `${parentId} has no children`);
      });
    }));

  withHubFlags(device.command('remove-children <parent>'))
    .description('take devices out from under an IoT Edge device')
    .option('--children <ids>', 'comma-separated device ids')
    .option('--all', 'remove every child')
    .action(action(async (parentId: string, flags: HubFlags & { children?: string; all?: boolean }) => {
      if (!!flags.children === !!flags.all) throw new UserError('give either --children a,b or --all');
      const ids = flags.children ? idList(flags.children, '--children') : [];
      await withHub(flags, async ({ client }) => {
        const parent = await getEdge(client, parentId, 'parents');
        let children: DeviceJson[];
        if (flags.all) {
          children = await Promise.all((await childrenOf(client, parent)).map((t) => client.getDevice(t.deviceId)));
        } else {
          children = await Promise.all(ids.map((c) => client.getDevice(c)));
          const stranger = children.find((c) => parentScopeOf(c) !== parent.deviceScope);
          if (stranger) throw new UserError(`${stranger.deviceId} is not a child of ${parent.deviceId}`, `See the children with \`strata device list-children ${parent.deviceId}\``);
        }
        for (const c of children) await setParentScope(client, c, undefined);
        const removed = children.map((c) => c.deviceId);
        emit(flags, { parentId: parent.deviceId, removed }, () =>
          removed.length ? `removed ${removed.join(', ')} from ${parent.deviceId}` : `${parent.deviceId} has no children`);
      });
    }));
}

function registerConnectionStringCommand(device: Command): void {
  withHubFlags(device.command('connection-string <id>'))
    .description('print the connection string a device (or module) uses')
    .option('--module <id>', 'for this module of the device')
    .option('--gateway <host>', 'connect through this gateway (adds GatewayHostName)')
    .action(action(async (id: string, flags: HubFlags & { module?: string; gateway?: string }) => {
      checkDeviceId(id);
      if (flags.module !== undefined) checkModuleId(flags.module);
      if (flags.gateway !== undefined && !/^[A-Za-z0-9.\-:[\]]+$/.test(flags.gateway)) {
        throw new UserError(`--gateway "${flags.gateway}" is not a host name`);
      }
      await withHub(flags, async ({ client, hostName }) => {
        const identity = flags.module === undefined ? await client.getDevice(id) : await client.getModule(id, flags.module);
        const what = flags.module === undefined ? `device ${id}` : `module ${id}/${flags.module}`;
        const auth = identity.authentication;
        const key = auth?.symmetricKey?.primaryKey;
        let secret: Record<string, string>;
        if (auth?.type === 'sas' && key) secret = { SharedAccessKey: key };
        else if (auth?.type === 'selfSigned' || auth?.type === 'certificateAuthority') secret = { x509: 'true' };
        else throw new UserError(`${what} has no key to put in a connection string (authentication: ${auth?.type ?? 'none'})`);
        const cs = formatConnectionString({
          HostName: hostName,
          DeviceId: id,
          ModuleId: flags.module,
          ...secret,
          GatewayHostName: flags.gateway,
        });
        emit(flags, { connectionString: cs }, () => cs);
      });
    }));
}

function registerModuleCommands(device: Command): void {
  const mod = device.command('module').description('module identities of a device');

  withAuthFlags(withHubFlags(mod.command('create <device> <module>')))
    .description('create a module identity')
    .action(action(async (deviceId: string, moduleId: string, flags: HubFlags & AuthFlags) => {
      checkDeviceId(deviceId);
      checkModuleId(moduleId);
      const auth = authentication(flags);
      await withHub(flags, async ({ client }) => {
        const created = await client.createModule({ deviceId, moduleId, authentication: auth });
        emit(flags, created, () => `created module ${deviceId}/${created.moduleId} (${authLabel(created.authentication)})`);
      });
    }));

  withHubFlags(mod.command('list <device>'))
    .description('list the modules of a device')
    .action(action(async (deviceId: string, flags: HubFlags) => {
      await withHub(flags, async ({ client }) => {
        const mods = (await client.listModules(checkDeviceId(deviceId))).sort((a, b) => a.moduleId.localeCompare(b.moduleId));
        emit(flags, mods, () => mods.length
          ? table(['MODULE', 'AUTH', 'MANAGED BY', 'CONNECTION'], mods.map((m: ModuleJson) => [m.moduleId, authLabel(m.authentication), m.managedBy ?? '', m.connectionState ?? '']))
          : `${deviceId} has no modules`);
      });
    }));

  withHubFlags(mod.command('delete <device> <module>'))
    .description('delete a module identity')
    .action(action(async (deviceId: string, moduleId: string, flags: HubFlags) => {
      checkDeviceId(deviceId);
      checkModuleId(moduleId);
      await withHub(flags, async ({ client }) => {
        await client.deleteModule(deviceId, moduleId);
        emit(flags, { deleted: `${deviceId}/${moduleId}` }, () => `deleted module ${deviceId}/${moduleId}`);
      });
    }));
}

function registerTwinCommands(device: Command): void {
  const twin = device.command('twin').description('device and module twins');

  withHubFlags(twin.command('show <device>'))
    .description('print the twin (JSON)')
    .option('--module <id>', "the module's twin instead of the device's")
    .action(action(async (deviceId: string, flags: HubFlags & { module?: string }) => {
      checkDeviceId(deviceId);
      if (flags.module !== undefined) checkModuleId(flags.module);
      await withHub(flags, async ({ client }) => {
        out(JSON.stringify(await client.getTwin(deviceId, flags.module), null, 2));
      });
    }));

  withHubFlags(twin.command('update <device>'))
    .description('merge desired properties and/or tags into the twin')
    .option('--module <id>', "the module's twin instead of the device's")
    .option('--desired <json>', 'desired properties to merge (null deletes a property)')
    .option('--tags <json>', 'tags to merge (null deletes a tag)')
    .option('--etag <etag>', 'only update if the twin still has this etag')
    .action(action(async (deviceId: string, flags: HubFlags & { module?: string; desired?: string; tags?: string; etag?: string }) => {
      checkDeviceId(deviceId);
      if (flags.module !== undefined) checkModuleId(flags.module);
      if (flags.desired === undefined && flags.tags === undefined) throw new UserError('nothing to update', 'Give --desired JSON and/or --tags JSON');
      const patch: Record<string, unknown> = {};
      if (flags.tags !== undefined) patch.tags = jsonObject(flags.tags, '--tags');
      if (flags.desired !== undefined) patch.properties = { desired: jsonObject(flags.desired, '--desired') };
      await withHub(flags, async ({ client }) => {
        const updated = await client.updateTwin(deviceId, patch, flags.etag ?? '*', flags.module);
        const who = flags.module === undefined ? deviceId : `${deviceId}/${flags.module}`;
        emit(flags, updated, () => `updated the twin of ${who} (desired $version ${String(updated.properties?.desired?.$version ?? '?')})`);
      });
    }));
}

export function registerDeviceCommands(program: Command): void {
  const device = program
    .command('device')
    .description('device and module identities, the parent/child hierarchy, twins and connection strings');
  registerIdentityCommands(device);
  registerHierarchyCommands(device);
  registerConnectionStringCommand(device);
  registerModuleCommands(device);
  registerTwinCommands(device);
}
