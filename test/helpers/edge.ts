import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { readGatewayState } from '../../src/edge/local.ts';
import { ServiceClient, type DeviceJson } from '../../src/hub/service-client.ts';
import { createEdgeCa, fullChainPem } from '../../src/pki/index.ts';
import { hubPkiPaths } from '../../src/hub/tls.ts';
import { randomLoopback, startHubProcess, type HubProcess } from './hub.ts';

/**
 * Shared pieces of the gateway tests and benchmark: an edge device registered at a hub (started
 * with startHubProcess), its Edge CA issued under the hub's root CA (so one root is trusted by
 * everyone, as in the seeds), its config.toml, its deployment (routes), leaf devices under it,
 * and `strata edge start` as a child process.
 */

const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export const newKey = (): string => randomBytes(32).toString('base64');

export const UPSTREAM_ROUTES = { upstream: 'FROM /messages/* INTO $upstream' };

/** The routes of the agent tests' module pipeline: sensor -> filter's input1, filter's output -> $upstream. */
export const PIPELINE_ROUTES = {
  sensorToFilter:
    'FROM /messages/modules/sensor/outputs/temperature INTO BrokeredEndpoint("/modules/filter/inputs/input1")',
  filterToUpstream: 'FROM /messages/modules/filter/outputs/* INTO $upstream',
};

/** `$edgeAgent` reported properties that show the deployment applied (200) and every module in `names` running. */
export function agentRunning(reported: any, names: readonly string[]): boolean {
  return (
    reported?.lastDesiredStatus?.code === 200 && names.every((m) => reported.modules?.[m]?.runtimeStatus === 'running')
  );
}

/** The seeds' deployment manifest shape, with these $edgeHub desired properties and `$edgeAgent` modules. */
export function deploymentManifest(
  edgeHub: { routes?: Record<string, unknown>; timeToLiveSecs?: number; modules?: Record<string, unknown> } = {},
): Record<string, unknown> {
  return {
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
          modules: edgeHub.modules ?? {},
        },
      },
      $edgeHub: {
        'properties.desired': {
          routes: edgeHub.routes ?? UPSTREAM_ROUTES,
          schemaVersion: '1.1',
          storeAndForwardConfiguration: { timeToLiveSecs: edgeHub.timeToLiveSecs ?? 7200 },
        },
      },
    },
  };
}

export interface EdgeSetup {
  dir: string;
  svc: ServiceClient;
  gatewayId: string;
  gatewayKey: string;
  gateway: DeviceJson;
  address: string;
  configPath: string;
  dataDir: string;
  /** The root CA every node trusts (the hub's). */
  rootPem: string;
  rootPath: string;
  /** Creates a SAS leaf device under the gateway; returns its connection string with GatewayHostName. */
  createLeaf(
    deviceId: string,
    opts?: { parent?: boolean },
  ): Promise<{ deviceId: string; key: string; connectionString: string }>;
  cleanup(): Promise<void>;
}

/**
 * Registers edge device `gatewayId` at the hub, issues its Edge CA from the hub's root CA,
 * writes its config.toml (hostname = `address`) and applies a deployment with `routes`.
 */
export async function setupEdge(
  hub: HubProcess,
  o: {
    gatewayId: string;
    address: string;
    routes?: Record<string, unknown>;
    timeToLiveSecs?: number;
    strata?: string;
    deploy?: boolean;
  },
): Promise<EdgeSetup> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-edge-'));
  const svc = new ServiceClient(hub.connectionString, { ca: hub.caPem });
  const gatewayKey = newKey();
  const gateway = await svc.createDevice({
    deviceId: o.gatewayId,
    capabilities: { iotEdge: true },
    authentication: { type: 'sas', symmetricKey: { primaryKey: gatewayKey, secondaryKey: newKey() } },
  });
  const root = { certPem: hub.caPem, keyPem: readFileSync(hubPkiPaths(hub.dataDir).rootKey, 'utf8') };
  const edgeCa = await createEdgeCa({ commonName: `${o.gatewayId}.ca`, issuer: root });
  const certs = join(dir, 'certs');
  await mkdir(join(certs, 'private'), { recursive: true });
  const caCert = join(certs, `iot-edge-device-ca-${o.gatewayId}-full-chain.cert.pem`);
  const caKey = join(certs, 'private', `iot-edge-device-ca-${o.gatewayId}.key.pem`);
  await writeFile(caCert, fullChainPem(edgeCa.certPem, root.certPem));
  await writeFile(caKey, edgeCa.keyPem, { mode: 0o600 });
  const configPath = join(dir, 'config.toml');
  await writeFile(
    configPath,
    [
      `hostname = "${o.address}"`,
      `trust_bundle_cert = "${pathToFileURL(hub.caPath).href}"`,
      '',
      '[provisioning]',
      'source = "manual"',
      `connection_string = "HostName=${hub.hostname};DeviceId=${o.gatewayId};SharedAccessKey=${gatewayKey}"`,
      '',
      '[edge_ca]',
      `cert = "${pathToFileURL(caCert).href}"`,
      `pk = "${pathToFileURL(caKey).href}"`,
      '',
      ...(o.strata ? ['[strata]', o.strata, ''] : []),
    ].join('\n'),
  );
  if (o.deploy !== false)
    await svc.applyConfigurationContent(
      o.gatewayId,
      deploymentManifest({ routes: o.routes, timeToLiveSecs: o.timeToLiveSecs }),
    );
  return {
    dir,
    svc,
    gatewayId: o.gatewayId,
    gatewayKey,
    gateway,
    address: o.address,
    configPath,
    dataDir: join(dir, 'data'),
    rootPem: hub.caPem,
    rootPath: hub.caPath,
    async createLeaf(deviceId, opts = {}) {
      const key = newKey();
      const underGateway = opts.parent !== false;
      await svc.createDevice({
        deviceId,
        authentication: { type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: newKey() } },
        ...(underGateway ? { deviceScope: gateway.deviceScope, parentScopes: [gateway.deviceScope!] } : {}),
      });
      return {
        deviceId,
        key,
        connectionString: `HostName=${hub.hostname};DeviceId=${deviceId};SharedAccessKey=${key};GatewayHostName=${o.address}`,
      };
    },
    async cleanup() {
      svc.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface GatewayProcess {
  proc: ChildProcess;
  address: string;
  dataDir: string;
  metricsPort: number;
  output(): string;
  /** GET /metrics as text. */
  metrics(): Promise<string>;
  /** SIGTERM and wait for the exit. */
  stop(): Promise<void>;
  /** SIGKILL, as a power cut would. */
  kill9(): Promise<void>;
}

function waitForExit(proc: ChildProcess, ms: number): Promise<boolean> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Runs `strata edge start` and waits until it listens (its state file names its pid). */
export async function startGatewayProcess(o: {
  configPath: string;
  dataDir: string;
  address: string;
  env?: Record<string, string>;
  args?: string[];
  nodeArgs?: string[];
}): Promise<GatewayProcess> {
  // Metrics listen on 127.0.0.1 by default: a free port each, so gateways of parallel tests never collide.
  const metricsPort = o.args?.includes('--metrics-port') ? [] : ['--metrics-port', '0'];
  const proc = spawn(
    process.execPath,
    [
      ...(o.nodeArgs ?? []),
      STRATA_BIN,
      'edge',
      'start',
      '--config',
      o.configPath,
      '--data',
      o.dataDir,
      ...metricsPort,
      ...(o.args ?? []),
    ],
    {
      env: { ...process.env, STRATA_LOG_LEVEL: process.env.STRATA_LOG_LEVEL ?? 'warn', ...o.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  live.add(proc);
  proc.once('exit', () => live.delete(proc));
  let out = '';
  const keep = (c: Buffer) => {
    out = (out + c.toString('utf8')).slice(-256 * 1024);
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null)
      throw new Error(`strata edge start exited (${proc.exitCode ?? proc.signalCode}) before it was ready:\n${out}`);
    const s = readGatewayState(o.dataDir);
    if (s && s.pid === proc.pid && /Press Ctrl\+C/.test(out)) break;
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`strata edge start was not ready within 30 s:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const state = readGatewayState(o.dataDir)!;
  return {
    proc,
    address: o.address,
    dataDir: o.dataDir,
    metricsPort: state.ports.metrics,
    output: () => out,
    metrics: () =>
      new Promise<string>((resolve, reject) => {
        http
          .get({ host: state.metricsBind ?? state.bind, port: state.ports.metrics, path: '/metrics' }, (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString()));
            res.on('end', () => resolve(body));
            res.on('error', reject);
          })
          .on('error', reject);
      }),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        if (!(await waitForExit(proc, 10_000))) {
          proc.kill('SIGKILL');
          await waitForExit(proc, 5000);
        }
      }
    },
    async kill9() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await waitForExit(proc, 5000);
      }
    },
  };
}

/** A metric's value from Prometheus text (first sample whose labels include all of `labels`). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([^{\s]+)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[4]);
  }
  return undefined;
}

/** Registers leaves under the gateway in bulk (100 per request), all with the same key; returns their ids. */
export async function createLeavesBulk(
  setup: EdgeSetup,
  prefix: string,
  count: number,
  key = newKey(),
): Promise<{ ids: string[]; key: string }> {
  const ids = Array.from({ length: count }, (_, i) => `${prefix}${i}`);
  for (let i = 0; i < ids.length; i += 100) {
    const body = ids.slice(i, i + 100).map((id) => ({
      id,
      importMode: 'create',
      authentication: { type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: key } },
      deviceScope: setup.gateway.deviceScope,
      parentScopes: [setup.gateway.deviceScope],
    }));
    const res = await setup.svc.request<{ isSuccessful: boolean; errors: unknown[] }>('POST', '/devices', { body });
    if (!res.body.isSuccessful) throw new Error(`bulk create failed: ${JSON.stringify(res.body.errors)}`);
  }
  return { ids, key };
}

/**
 * A hub and one gateway under it on its own loopback address, deployed with the upstream route:
 * the fixture of most single-gateway tests. Their stops go into `cleanups` (run in reverse).
 */
export async function startHubWithGateway(
  gatewayId: string,
  cleanups: Array<() => unknown>,
  hubOptions: Parameters<typeof startHubProcess>[0] = {},
): Promise<{ hub: HubProcess; edge: EdgeSetup; gw: GatewayProcess }> {
  const hub = await startHubProcess(hubOptions);
  cleanups.push(() => hub.stop());
  const address = randomLoopback();
  const edge = await setupEdge(hub, { gatewayId, address });
  cleanups.push(() => edge.cleanup());
  const gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address });
  cleanups.push(() => gw.stop());
  return { hub, edge, gw };
}
