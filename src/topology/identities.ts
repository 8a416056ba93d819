import { formatConnectionString } from '../identity/connection-string.ts';
import { ServiceError, type DeviceJson, type ServiceClient } from '../hub/service-client.ts';
import { UserError } from '../util/errors.ts';
import { gatewayDeployment } from './gateway-modules.ts';
import { HUB_PARENT, type Topology } from './spec.ts';

/**
 * The topology's identities in the hub: an IoT Edge device per gateway under its parent, a
 * device per leaf under its gateway, and each gateway's deployment (routes to `$upstream`, or
 * the modules and routes the file gives it).
 * Existing identities are reused and moved under the parent the file names, so `up` can run
 * again on the same directory.
 */

/** The `$edgeHub` part of the seeds' deployment: everything downstream goes up. */
export const GATEWAY_DEPLOYMENT = {
  modulesContent: {
    $edgeAgent: {
      'properties.desired': {
        schemaVersion: '1.1',
        runtime: { type: 'docker', settings: { minDockerVersion: 'v1.25' } },
        systemModules: {
          edgeAgent: {
            type: 'docker',
            settings: { image: 'mcr.microsoft.com/azureiotedge-agent:1.2', createOptions: '{}' },
          },
          edgeHub: {
            type: 'docker',
            status: 'running',
            restartPolicy: 'always',
            settings: { image: 'mcr.microsoft.com/azureiotedge-hub:1.2', createOptions: '{}' },
          },
        },
        modules: {},
      },
    },
    $edgeHub: {
      'properties.desired': {
        schemaVersion: '1.1',
        routes: { upstream: 'FROM /messages/* INTO $upstream' },
        storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
      },
    },
  },
};

export interface ProvisionedIdentities {
  /** Gateway id -> the edge device's connection string (to the hub). */
  gateways: Map<string, string>;
  /** Leaf id -> its connection string through its gateway (GatewayHostName set). */
  devices: Map<string, string>;
}

async function getIfExists(client: ServiceClient, id: string): Promise<DeviceJson | undefined> {
  try {
    return await client.getDevice(id);
  } catch (err) {
    if (err instanceof ServiceError && err.status === 404) return undefined;
    throw err;
  }
}

function sasKey(d: DeviceJson): string {
  const key = d.authentication?.type === 'sas' ? d.authentication.symmetricKey?.primaryKey : undefined;
  if (!key) {
    throw new UserError(
      `device ${d.deviceId} already exists in the hub with ${d.authentication?.type ?? 'no'} authentication, but the topology's devices use SAS keys`,
      `Delete it (strata device delete ${d.deviceId}) or rename it in the topology file`,
    );
  }
  return key;
}

/** Creates the identity, or brings an existing one to the wanted edge flag and parent. */
async function ensureDevice(
  client: ServiceClient,
  wanted: { deviceId: string; edge: boolean; parentScope?: string },
): Promise<DeviceJson> {
  const existing = await getIfExists(client, wanted.deviceId);
  const parentScopes = wanted.parentScope ? [wanted.parentScope] : [];
  if (!existing) {
    const body: DeviceJson = {
      deviceId: wanted.deviceId,
      status: 'enabled',
      authentication: { type: 'sas', symmetricKey: { primaryKey: '', secondaryKey: '' } },
      capabilities: { iotEdge: wanted.edge },
      parentScopes,
    };
    if (!wanted.edge && wanted.parentScope) body.deviceScope = wanted.parentScope;
    return client.createDevice(body);
  }
  sasKey(existing);
  const sameParent = (existing.parentScopes ?? []).filter(Boolean).join() === parentScopes.join();
  const sameKind = (existing.capabilities?.iotEdge === true) === wanted.edge;
  const enabled = existing.status !== 'disabled';
  if (
    sameParent &&
    sameKind &&
    enabled &&
    (wanted.edge || existing.deviceScope === (wanted.parentScope ?? existing.deviceScope))
  )
    return existing;
  const updated: DeviceJson = {
    ...existing,
    status: 'enabled',
    capabilities: { ...existing.capabilities, iotEdge: wanted.edge },
    parentScopes,
  };
  if (!wanted.edge) updated.deviceScope = wanted.parentScope ?? '';
  return client.updateDevice(updated, existing.etag ?? '*');
}

/**
 * Makes every identity of the topology and applies each gateway's deployment. `hubHost` is the
 * hub's host name as devices name it in their connection strings.
 */
export async function provisionIdentities(
  client: ServiceClient,
  hubHost: string,
  topology: Topology,
): Promise<ProvisionedIdentities> {
  const scopes = new Map<string, string>();
  const out: ProvisionedIdentities = { gateways: new Map(), devices: new Map() };
  for (const g of topology.gateways) {
    const parentScope = g.parent === HUB_PARENT ? undefined : scopes.get(g.parent);
    const d = await ensureDevice(client, { deviceId: g.id, edge: true, parentScope });
    if (!d.deviceScope)
      throw new UserError(
        `the hub gave IoT Edge device ${g.id} no device scope`,
        'Is the hub a Strata hub of this version?',
      );
    scopes.set(g.id, d.deviceScope);
    await client.request('POST', `/devices/${encodeURIComponent(g.id)}/applyConfigurationContent`, {
      body: gatewayDeployment(GATEWAY_DEPLOYMENT, g),
    });
    out.gateways.set(g.id, formatConnectionString({ HostName: hubHost, DeviceId: g.id, SharedAccessKey: sasKey(d) }));
  }
  const addressOf = new Map(topology.gateways.map((g) => [g.id, g.address]));
  for (const leaf of topology.devices) {
    const d = await ensureDevice(client, { deviceId: leaf.id, edge: false, parentScope: scopes.get(leaf.parent) });
    out.devices.set(
      leaf.id,
      formatConnectionString({
        HostName: hubHost,
        DeviceId: leaf.id,
        SharedAccessKey: sasKey(d),
        GatewayHostName: addressOf.get(leaf.parent),
      }),
    );
  }
  return out;
}
