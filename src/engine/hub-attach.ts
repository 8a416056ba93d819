import type { HubNode } from '../hub/hub.ts';
import { UserError } from '../util/errors.ts';
import { hubIdentitySource } from '../hub/scope-api.ts';
import { attachMqttWebSocket, startMqttListener } from '../protocols/mqtt/server.ts';
import { Engine } from './engine.ts';
import { reserveBytesOf } from '../store/disk-headroom.ts';
import type { EngineOptions } from './types.ts';

const engines = new WeakMap<HubNode, Engine>();

/** STRATA_DISK_RESERVE_MB, when set: the event stream's free-space reserve. */
function envDiskReserve(): number | undefined {
  const raw = process.env.STRATA_DISK_RESERVE_MB;
  if (raw === undefined || raw.trim() === '') return undefined;
  try {
    return reserveBytesOf(raw, 'the environment variable STRATA_DISK_RESERVE_MB');
  } catch (err) {
    throw new UserError((err as Error).message, 'Set it to a number of MiB, e.g. 64 (the default)');
  }
}

/** The engine attached to a hub node (for the HTTPS device API and the service endpoints). */
export function engineOf(node: HubNode): Engine | undefined {
  return engines.get(node);
}

export type DeviceEngineOptions = Partial<Omit<EngineOptions, 'registry' | 'dataDir' | 'hostName'>>;

/**
 * Starts the device engine over the hub's registry and data directory, and its MQTT heads:
 * MQTT over TLS on `node.ports.mqtt` and MQTT over WebSockets on the HTTPS server.
 */
export async function attachDeviceEngine(node: HubNode, opts: DeviceEngineOptions = {}): Promise<Engine> {
  const envRetention = Number(process.env.STRATA_EVENT_RETENTION_MS);
  const engine = new Engine({
    registry: node.registry,
    dataDir: node.dataDir,
    hostName: node.hostname,
    ...opts,
    retentionMs: opts.retentionMs ?? (Number.isFinite(envRetention) && envRetention > 0 ? envRetention : undefined),
    diskReserveBytes: opts.diskReserveBytes ?? envDiskReserve(),
  });
  await engine.start();
  engines.set(node, engine);
  node.onClose(() => engine.close());
  node.registry.cloudToDeviceCount = (deviceId: string, moduleId?: string) => {
    try {
      return engine.c2d.depth(deviceId, moduleId ?? '');
    } catch {
      return 0;
    }
  };

  // Edge hubs below connect for the identities in their scope (on-behalf-of), checked against the registry.
  const onBehalfOf = hubIdentitySource(node);
  let mqtt;
  try {
    mqtt = await startMqttListener({ engine, host: node.bind, port: node.ports.mqtt, certPem: node.tls.certPem, keyPem: node.tls.keyPem, onBehalfOf, preAuth: node.preAuth });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
      throw new UserError(`cannot listen for MQTT on ${node.bind}:${node.ports.mqtt}: ${(err as Error).message}`, 'Choose another --mqtt-port or --bind address');
    }
    throw err;
  }
  node.onClose(() => mqtt.close());
  node.ports.mqtt = mqtt.port;
  node.listeners.push({ name: 'MQTT (TLS)', url: `mqtts://${node.hostname}:${mqtt.port}` });

  const ws = attachMqttWebSocket(node.https, engine, undefined, onBehalfOf, node.preAuth);
  node.onClose(() => ws.close());
  const httpsPort = node.ports.https;
  node.listeners.push({ name: 'MQTT over WebSockets', url: `wss://${node.hostname}${httpsPort === 443 || httpsPort === 0 ? '' : `:${httpsPort}`}/$iothub/websocket` });
  return engine;
}
