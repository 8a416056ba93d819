import { EventEmitter } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { TwinCollection } from '../model/twin.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { RouteTable, parseEdgeHubDesired } from '../routing/route-table.ts';
import type { UpstreamIdentity } from '../upstream/index.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { childLog } from '../util/log.ts';
import type { TwinCache } from './twin-cache.ts';

/**
 * The gateway's routes: `routes` and `storeAndForwardConfiguration` from its own `$edgeHub`
 * module twin's desired properties (set by a deployment: `strata hub set-modules`, or the
 * service API's applyConfigurationContent).
 *
 * The last configuration that compiled is kept in the data directory (replaced atomically), and
 * a restarted gateway routes with it until the parent's desired properties are read: a bad
 * update is logged, reported in the `$edgeHub` reported properties (`lastDesiredStatus`, as the
 * original edge hub does) and ignored, so it can never leave the gateway without routes.
 *
 * Before any deployment is known (first start, parent not reached yet, or no `$edgeHub`
 * desired properties at the parent) the gateway uses DEFAULT_ROUTE, the route a new IoT Edge
 * deployment starts with: device and module telemetry goes upstream. Accepting a message and
 * dropping it for want of routes would lose data a device was told is safe; the original
 * avoids that by not serving devices until it has its configuration, which a gateway that
 * serves devices while its parent is away cannot do.
 */

/** Used until a deployment's routes are known. */
export const DEFAULT_ROUTE = { name: 'default', route: 'FROM /messages/* INTO $upstream' } as const;

export interface EdgeHubRoutesEvents {
  /** A new table is in force. */
  changed: [table: RouteTable];
}

/** What `routes.json` holds: the desired properties that compiled, with their version. */
interface LastGood {
  version?: number;
  desired: TwinCollection;
  savedAt: string;
}

function defaultTable(): RouteTable {
  return RouteTable.fromDefinitions([DEFAULT_ROUTE]);
}

function hasDeployment(desired: TwinCollection): boolean {
  return Object.keys(desired).some((k) => !k.startsWith('$'));
}

export class EdgeHubRoutes extends EventEmitter<EdgeHubRoutesEvents> {
  private current = defaultTable();
  private fromDeployment = false;
  private version?: number;
  private everApplied = false;
  /** The version last refused, so a refresh of the same bad version is not logged again. */
  private rejectedVersion?: number;
  private channel?: UpstreamIdentity;
  private lastReported?: string;
  private readonly log: Logger;

  constructor(private readonly o: { edgeDeviceId: string; twins: TwinCache; lastGoodPath?: string; log?: Logger }) {
    super();
    this.log = o.log ?? childLog('routes');
  }

  get table(): RouteTable {
    return this.current;
  }

  /** Whether any route is in force (the default route counts). */
  get configured(): boolean {
    return this.current.routes.length > 0;
  }

  /** True while no deployment is known and DEFAULT_ROUTE is in force. */
  get usingDefault(): boolean {
    return !this.fromDeployment;
  }

  /** The hint printed wherever "no routes" is reported. */
  get howToConfigure(): string {
    return `set routes in the $edgeHub desired properties, e.g. \`strata hub set-modules --device ${this.o.edgeDeviceId} --content deployment.json\` with "routes": {"upstream": "FROM /messages/* INTO $upstream"}`;
  }

  /**
   * Start-up: the last good configuration kept on disk, else the cached `$edgeHub` twin (a data
   * directory from before routes.json existed), else the default route.
   */
  loadCached(): void {
    const kept = this.readLastGood();
    if (kept && this.apply(kept.desired, 'the last good routes kept on disk', { persist: false })) return;
    const cached = this.o.twins.get(this.o.edgeDeviceId, EDGE_HUB);
    if (cached && hasDeployment(cached.desired) && this.apply(cached.desired, 'the cached $edgeHub twin')) return;
    // A first start: normal, and the parent's answer (warned about if it has no deployment) follows.
    this.log.info(
      `no deployment known yet: routing with the default route "${DEFAULT_ROUTE.route}" until the $edgeHub desired properties are read from upstream`,
    );
  }

  /**
   * Follows the `$edgeHub` twin through the upstream channel: a full read now (or when the link
   * comes up), on every reconnect and each time the desired subscription is confirmed, and each
   * push. Resolves after the first read, whatever its outcome.
   */
  follow(
    channel: UpstreamIdentity,
    link: { on(event: 'up', fn: () => void): unknown; connected: boolean },
  ): Promise<void> {
    this.channel = channel;
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
          (err: unknown) =>
            this.log.warn(
              { err: (err as Error).message },
              'could not read the $edgeHub twin from upstream; routing with the routes known so far',
            ),
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

  /**
   * Compiles and installs a configuration; returns false (the routes in force kept) when it is
   * bad. Desired properties without a deployment put the default route in force.
   */
  apply(desired: TwinCollection, from: string, opts: { persist?: boolean } = {}): boolean {
    const version = typeof desired.$version === 'number' ? desired.$version : undefined;
    if (this.everApplied && version !== undefined && version === this.version) return true;
    if (version !== undefined && version === this.rejectedVersion) return false;
    const deployed = hasDeployment(desired);
    let table: RouteTable;
    try {
      if (!deployed) {
        table = defaultTable();
      } else {
        const cfg = parseEdgeHubDesired(desired);
        table = RouteTable.fromDefinitions(cfg.routes, cfg.timeToLiveSecs);
      }
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      const hint = (err as { hint?: string }).hint;
      this.rejectedVersion = version;
      this.log.error(
        { from, version, error: msg, hint, keeping: this.current.routes.map((r) => r.name) },
        `bad route configuration in ${from}: ${msg}; keeping the previous routes`,
      );
      this.report(
        version,
        400,
        `the desired properties were not applied: ${msg}${hint ? ` (${hint})` : ''}; the previous routes stay in force`,
      );
      return false;
    }
    this.current = table;
    this.fromDeployment = deployed;
    this.version = version;
    this.rejectedVersion = undefined;
    this.everApplied = true;
    if (opts.persist !== false) this.keep(desired, version);
    const ttl = table.globalTtlSecs === Infinity ? 'never' : `${table.globalTtlSecs} s`;
    if (!deployed) {
      this.log.warn(
        { from, version },
        `no deployment in ${from}: routing with the default route "${DEFAULT_ROUTE.route}"; ${this.howToConfigure}`,
      );
    } else if (table.routes.length === 0) {
      this.log.warn(
        { from, version },
        `the deployment has no routes: messages from devices are not forwarded; ${this.howToConfigure}`,
      );
    } else {
      this.log.info(
        { from, version, routes: table.routes.map((r) => `${r.name}: ${r.text ?? ''}`.trim()), timeToLive: ttl },
        `routes applied (${table.routes.length})`,
      );
    }
    this.report(version, 200, '');
    this.emit('changed', table);
    return true;
  }

  private readLastGood(): LastGood | undefined {
    const path = this.o.lastGoodPath;
    if (!path || !existsSync(path)) return undefined;
    try {
      const kept = JSON.parse(readFileSync(path, 'utf8')) as LastGood;
      if (kept && typeof kept.desired === 'object' && kept.desired !== null) return kept;
    } catch (err) {
      this.log.warn(
        { file: path, err: (err as Error).message },
        'the kept route configuration is unreadable; ignoring it',
      );
    }
    return undefined;
  }

  private keep(desired: TwinCollection, version: number | undefined): void {
    const path = this.o.lastGoodPath;
    if (!path) return;
    const kept: LastGood = {
      ...(version !== undefined ? { version } : {}),
      desired,
      savedAt: new Date().toISOString(),
    };
    try {
      writeFileAtomic(path, `${JSON.stringify(kept, null, 2)}\n`, 0o600);
    } catch (err) {
      this.log.warn(
        { file: path, err: (err as Error).message },
        'could not keep the route configuration on disk; a restart before the parent answers routes with the previous one',
      );
    }
  }

  /** `lastDesiredVersion` / `lastDesiredStatus` in the `$edgeHub` reported properties, as the original reports them. */
  private report(version: number | undefined, code: number, description: string): void {
    const channel = this.channel;
    if (!channel || version === undefined) return;
    const key = `${version}:${code}`;
    if (key === this.lastReported) return;
    this.lastReported = key;
    channel
      .twinPatchReported({ lastDesiredVersion: version, lastDesiredStatus: { code, description } })
      .catch((err: unknown) => {
        this.lastReported = undefined;
        this.log.debug({ err: (err as Error).message }, 'could not report the route configuration status upstream');
      });
  }
}
