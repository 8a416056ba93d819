import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { Engine } from '../engine/engine.ts';
import type { ParentLink } from '../upstream/index.ts';
import { DEFAULT_ROUTE, type EdgeHubRoutes } from './edgehub-routes.ts';
import type { RunningConfig } from './reload.ts';
import type { SecurityManager } from './security-manager.ts';

/** The lines `strata edge start` prints once the gateway runs: where each listener is and what it trusts. */

export interface SummarySources {
  deviceId: string;
  dataDir: string;
  bind: string;
  metricsBind: string;
  ports: { mqtt: number; amqp: number; https: number; metrics: number };
  hubHostName: string;
  security: SecurityManager;
  link: ParentLink;
  engine: Engine;
  routes: EdgeHubRoutes;
  running: RunningConfig;
  /** Whether the edge agent runs (config.toml [agent] or [moby_runtime]). */
  agent: boolean;
}

function portText(port: number, dflt: number): string {
  return port === dflt ? '' : `:${port}`;
}

export function gatewaySummary(s: SummarySources): string[] {
  const { deviceId, dataDir, bind, metricsBind, ports, hubHostName, security, link, engine, routes } = s;
  const config = s.running.config;
  const describeTrust = () =>
    security.usingQuickstartCa
      ? `the quickstart Edge CA ${security.quickstartCaPath}`
      : `the root of trust_bundle_cert ${config.trustBundleCert}`;
  const h = security.currentHostname;
  const caSubject = new X509Certificate(security.edgeCaPem).subject.replace(/\n/g, ', ');
  return [
    `strata edge gateway ${deviceId} is running (data: ${dataDir}, listening on ${bind})`,
    `  hostname                 ${h} (server certificate CN; SAN ${isIP(h) ? 'IP' : 'DNS'}:${h}, DNS:edgehub; valid until ${security.identity.notAfter.toISOString()})`,
    `  MQTT (TLS)               mqtts://${h}${portText(ports.mqtt, 8883) || ':8883'}`,
    `  AMQP (TLS)               amqps://${h}${portText(ports.amqp, 5671) || ':5671'}`,
    `  HTTPS                    https://${h}${portText(ports.https, 443)}/health`,
    `  MQTT/AMQP over WebSockets wss://${h}${portText(ports.https, 443)}/$iothub/websocket`,
    `  metrics                  http://${metricsBind.includes(':') ? `[${metricsBind}]` : metricsBind}:${ports.metrics}/metrics`,
    `  Edge CA                  ${security.usingQuickstartCa ? `quickstart (self-signed, ${security.quickstartCaPath})` : `${caSubject} (${config.edgeCa?.cert})`}`,
    `  devices must trust       ${describeTrust()}`,
    `  trusts upstream          ${config.trustBundleCert}`,
    `  upstream                 ${link.describeParent()} (${config.parentHostname ? `parent gateway ${config.parentHostname}` : `IoT hub ${hubHostName}`}): ${link.connected ? 'connected' : 'not connected yet (devices are served offline; messages are stored)'}`,
    `  MaxConnectedClients      ${engine.maxConnectedClients} (${s.running.maxClientsSource})`,
    `  routes                   ${routes.usingDefault ? `the default route until a deployment is read (${DEFAULT_ROUTE.route}); ${routes.howToConfigure}` : routes.configured ? routes.table.routes.map((r) => r.name).join(', ') : `none in the deployment: messages are not forwarded; ${routes.howToConfigure}`}`,
    `  modules                  ${s.agent ? `the edge agent runs the $edgeAgent deployment: process modules${config.mobyRuntime ? `, containers on ${config.mobyRuntime.uri}` : ' (no [moby_runtime]: no containers)'}` : 'no edge agent (add [agent] or [moby_runtime] to config.toml to run modules)'}`,
  ];
}
