import { mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';

/**
 * A gateway's config.toml in the seeds' form: the top-level keys first (a key written after a
 * section header would belong to that section), then [provisioning], [edge_ca] and, when a
 * setting of Strata's own is given, [strata].
 */

export interface GatewayConfigInput {
  hostname: string;
  /** Absent for a gateway directly under the hub. */
  parentHostname?: string;
  trustBundleCert: string;
  connectionString: string;
  edgeCaCert: string;
  edgeCaKey: string;
  /** The gateway's UpstreamProtocol, written under [strata]; absent: its default (Amqp). */
  upstreamProtocol?: string;
  /**
   * Where the gateway serves /metrics, written under [strata] (absent: loopback 127.0.0.1). The
   * topology gives each gateway its own loopback address, so each keeps the standard port 9600.
   */
  metricsBind?: string;
  /** The gateway's data directory, written as [strata] data_dir so `strata edge` commands given this config find it. */
  dataDir?: string;
  /** Turns on the edge agent ([agent]): the gateway runs modules. */
  agent?: boolean;
  /** Every node's HTTPS port when not 443: written as [strata] https_port and parent_https_port. */
  httpsPort?: number;
  /** Where the values came from, for the header comment. */
  source: string;
}

const str = (s: string) => JSON.stringify(s);
const fileUri = (path: string) => pathToFileURL(path).href;

export function renderGatewayConfig(c: GatewayConfigInput): string {
  const lines = [
    `# Written by \`strata topology up\` from ${c.source}; rewritten on every up.`,
    `hostname = ${str(c.hostname)}`,
    ...(c.parentHostname ? [`parent_hostname = ${str(c.parentHostname)}`] : []),
    `trust_bundle_cert = ${str(fileUri(c.trustBundleCert))}`,
    '',
    '[provisioning]',
    'source = "manual"',
    `connection_string = ${str(c.connectionString)}`,
    '',
    '[edge_ca]',
    `cert = ${str(fileUri(c.edgeCaCert))}`,
    `pk = ${str(fileUri(c.edgeCaKey))}`,
    '',
  ];
  const strata = [
    ...(c.upstreamProtocol ? [`upstream_protocol = ${str(c.upstreamProtocol)}`] : []),
    ...(c.metricsBind ? [`metrics_bind = ${str(c.metricsBind)}`] : []),
    ...(c.dataDir ? [`data_dir = ${str(c.dataDir)}`] : []),
    ...(c.httpsPort ? [`https_port = ${c.httpsPort}`, `parent_https_port = ${c.httpsPort}`] : []),
  ];
  if (strata.length > 0) lines.push('[strata]', ...strata, '');
  if (c.agent) lines.push('[agent]', 'name = "edgeAgent"', '');
  return lines.join('\n');
}

/** Writes the config readable by its owner only: it holds the gateway's key. */
export function writeGatewayConfig(path: string, c: GatewayConfigInput): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, renderGatewayConfig(c), { mode: 0o600 });
  chmodSync(path, 0o600);
}
