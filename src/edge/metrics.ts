import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Registry } from 'prom-client';
import { childLog } from '../util/log.ts';

const log = childLog('edge-metrics');

/** What the metrics read at scrape time. */
export interface MetricsSources {
  connectedClients(): number;
  maxConnectedClients(): number;
  /** Per endpoint: queue length, entries dropped on TTL and entries set aside as unreadable (the last two kept by the store across restarts). */
  endpoints(): Array<{ endpoint: string; queueLength: number; expired: number; setAside: number }>;
  upstreamConnected(): boolean;
}

/**
 * The gateway's Prometheus metrics, named like the original edge hub's (`edgehub_*`): connected
 * clients, messages received from devices and sent to each endpoint (and of those, passed on
 * without being stored: edge/direct-forward.ts), queue length per endpoint,
 * messages dropped (TTL passed, no route) or set aside (unreadable), and the upstream link state.
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly received: Counter<'protocol'>;
  readonly sent: Counter<'endpoint'>;
  readonly dropped: Counter<'reason'>;
  readonly passedOn: Counter;
  readonly resends: Counter;

  constructor(sources: MetricsSources, labels: { edge_device: string }) {
    const r = this.registry;
    r.setDefaultLabels(labels);
    new Gauge({
      name: 'edgehub_connected_clients',
      help: 'Downstream identities connected now',
      registers: [r],
      collect() {
        this.set(sources.connectedClients());
      },
    });
    new Gauge({
      name: 'edgehub_max_connected_clients',
      help: 'MaxConnectedClients in force',
      registers: [r],
      collect() {
        const n = sources.maxConnectedClients();
        this.set(Number.isFinite(n) ? n : -1);
      },
    });
    this.received = new Counter({
      name: 'edgehub_messages_received_total',
      help: 'Telemetry messages accepted from downstream devices and modules',
      labelNames: ['protocol'],
      registers: [r],
    });
    this.sent = new Counter({
      name: 'edgehub_messages_sent_total',
      help: 'Messages delivered to an endpoint ($upstream or a module input)',
      labelNames: ['endpoint'],
      registers: [r],
    });
    this.passedOn = new Counter({
      name: 'edgehub_messages_passed_on_total',
      help: 'Messages of child gateways passed to the parent as they came, not stored here (the child keeps them until the parent has them); also counted in edgehub_messages_sent_total',
      registers: [r],
    });
    this.resends = new Counter({
      name: 'edgehub_messages_resent_total',
      help: 'Messages a device sent again on a new connection after its acknowledgement was lost (same sender and message id within the resend window): acknowledged, stored once',
      registers: [r],
    });
    this.dropped = new Counter({
      name: 'edgehub_messages_dropped_total',
      help: 'Messages accepted but not forwarded (reason: no_route)',
      labelNames: ['reason'],
      registers: [r],
    });
    new Gauge({
      name: 'edgehub_queue_length',
      help: 'Messages waiting in the store, per endpoint',
      labelNames: ['endpoint'],
      registers: [r],
      collect() {
        this.reset();
        for (const e of sources.endpoints()) this.set({ endpoint: e.endpoint }, e.queueLength);
      },
    });
    new Counter({
      name: 'edgehub_messages_expired_total',
      help: 'Messages dropped because they waited longer than their time to live, per endpoint (since the store was created)',
      labelNames: ['endpoint'],
      registers: [r],
      collect() {
        this.reset();
        for (const e of sources.endpoints()) this.inc({ endpoint: e.endpoint }, e.expired);
      },
    });
    new Counter({
      name: 'edgehub_messages_set_aside_total',
      help: 'Stored messages that could not be read back, kept in the store table set_aside instead of being sent, per endpoint',
      labelNames: ['endpoint'],
      registers: [r],
      collect() {
        this.reset();
        for (const e of sources.endpoints()) this.inc({ endpoint: e.endpoint }, e.setAside);
      },
    });
    new Gauge({
      name: 'edgehub_upstream_connected',
      help: '1 while the link to the parent is up',
      registers: [r],
      collect() {
        this.set(sources.upstreamConnected() ? 1 : 0);
      },
    });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** Serves `GET /metrics` (Prometheus text) on its own port, like the original's :9600. */
export async function serveMetrics(
  metrics: GatewayMetrics,
  host: string,
  port: number,
): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only GET /metrics here\n');
      return;
    }
    metrics.text().then(
      (body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body),
      (err: unknown) => {
        log.error({ err }, 'could not render metrics');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'metrics listener error'));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
