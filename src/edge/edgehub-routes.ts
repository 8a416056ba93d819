import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { TwinCollection } from '../engine/types.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { RouteConfigError } from '../routing/errors.ts';
import { RouteTable, parseEdgeHubDesired } from '../routing/route-table.ts';
import type { UpstreamIdentity } from '../upstream/upstream.ts';
import { childLog } from '../util/log.ts';
import type { TwinCache } from './twin-cache.ts';

/**
 * The gateway's routes: `routes` and `storeAndForwardConfiguration` from its own `$edgeHub`
 * module twin's desired properties (set by a deployment: `strata hub set-modules`, or the
 * service API's applyConfigurationContent). The last configuration seen is kept on disk, so a
 * gateway that starts while the parent is unreachable routes as before. A configuration that
 * does not compile is logged and the previous table kept.
 */

export interface EdgeHubRoutesEvents {
  /** A new table is in force. */
  changed: [table: RouteTable];
}

export class EdgeHubRoutes extends EventEmitter<EdgeHubRoutesEvents> {
  private current = new RouteTable([]);
  private version?: number;
  private everApplied = false;
  private readonly log: Logger;

  constructor(private readonly o: { edgeDeviceId: string; twins: TwinCache; log?: Logger }) {
    super();
    this.log = o.log ?? childLog('routes');
  }

  get table(): RouteTable {
    return this.current;
  }

  /** Whether any route is configured. */
  get configured(): boolean {
    return this.current.routes.length > 0;
  }

  /** The hint printed wherever "no routes" is reported. */
  get howToConfigure(): string {
    return `set routes in the $edgeHub desired properties, e.g. \`strata hub set-modules --device ${this.o.edgeDeviceId} --content deployment.json\` with "routes": {"upstream": "FROM /messages/* INTO $upstream"}`;
  }

  /** Applies what the cache holds (start-up); says so when nothing is configured. */
  loadCached(): void {
    const cached = this.o.twins.get(this.o.edgeDeviceId, EDGE_HUB);
    if (cached) this.apply(cached.desired, 'the cached $edgeHub twin');
    else this.log.warn(`no routes configured yet (no $edgeHub twin seen): messages from devices are not forwarded until routes arrive from upstream; ${this.howToConfigure}`);
  }

  /**
   * Follows the `$edgeHub` twin through the upstream channel: a full read now (or when the link
   * comes up), on every reconnect and each time the desired subscription is confirmed, and each
   * push. Resolves after the first read, whatever its outcome.
   */
  follow(channel: UpstreamIdentity, link: { on(event: 'up', fn: () => void): unknown; connected: boolean }): Promise<void> {
    let firstDone!: () => void;
    const first = new Promise<void>((r) => (firstDone = r));
    const refresh = () => {
      channel
        .twinGet()
        .then(
          (twin) => {
            this.o.twins.put(this.o.edgeDeviceId, EDGE_HUB, twin);
            this.apply(twin.desired, 'the $edgeHub twin');
          },
          (err: unknown) => this.log.warn({ err: (err as Error).message }, 'could not read the $edgeHub twin from upstream; routing with the routes known so far'),
        )
        .finally(firstDone);
    };
    // Read again each time the subscription is confirmed: a change made before it was not pushed.
    channel.onDesired((patch) => {
      const merged = this.o.twins.mergeDesired(this.o.edgeDeviceId, EDGE_HUB, patch);
      this.apply(merged, 'a $edgeHub desired properties update');
    }, refresh);
    link.on('up', refresh);
    if (link.connected) refresh();
    return first;
  }

  /** Compiles and installs a configuration; returns false (previous table kept) when it is bad. */
  apply(desired: TwinCollection, from: string): boolean {
    const version = typeof desired.$version === 'number' ? desired.$version : undefined;
    if (this.everApplied && version !== undefined && version === this.version) return true;
    let table: RouteTable;
    try {
      const hasConfig = Object.keys(desired).some((k) => k !== '$version' && k !== '$metadata');
      if (!hasConfig) {
        table = new RouteTable([]);
      } else {
        const cfg = parseEdgeHubDesired(desired);
        table = RouteTable.fromDefinitions(cfg.routes, cfg.timeToLiveSecs);
      }
    } catch (err) {
      const msg = err instanceof RouteConfigError || err instanceof Error ? err.message : String(err);
      const hint = (err as { hint?: string }).hint;
      this.log.error(
        { from, version, error: msg, hint, keeping: this.current.routes.map((r) => r.name) },
        `bad route configuration in ${from}: ${msg}; keeping the previous routes`,
      );
      return false;
    }
    this.current = table;
    this.version = version;
    this.everApplied = true;
    const ttl = table.globalTtlSecs === Infinity ? 'never' : `${table.globalTtlSecs} s`;
    if (table.routes.length === 0) {
      this.log.warn({ from, version }, `no routes configured: messages from devices are not forwarded; ${this.howToConfigure}`);
    } else {
      this.log.info({ from, version, routes: table.routes.map((r) => `${r.name}: ${r.text ?? ''}`.trim()), timeToLive: ttl }, `routes applied (${table.routes.length})`);
    }
    this.emit('changed', table);
    return true;
  }
}
