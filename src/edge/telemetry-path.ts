import { traceOrigin, tracingOrigins } from '../util/origin-trace.ts';
import { createHash, randomUUID } from 'node:crypto';
import type { Engine } from '../engine/engine.ts';
import type { TelemetryItem, TelemetrySink } from '../engine/types.ts';
import { appendOnce } from '../engine/telemetry.ts';
import { EngineError } from '../model/errors.ts';
import type { AuthResult } from '../model/identity.ts';
import type { ForwardedOrigin, Message } from '../model/message.ts';
import { countedEndpoint } from '../routing/counted-endpoint.ts';
import { EndpointPump, type DeliveryEndpoint } from '../routing/pump.ts';
import type { Delivery, RouteTable } from '../routing/route-table.ts';
import { type MessageStore, StoreFullError, type AppendEntry, type AppendTarget } from '../store/message-store.ts';
import type { ResendKey } from '../store/resend-window.ts';
import { storedMessageOf } from '../store/sender-message.ts';
import type { ParentLink } from '../upstream/index.ts';
import { mark, tracing } from '../util/latency-trace.ts';
import { childLog } from '../util/log.ts';
import { DirectForwarder } from './direct-forward.ts';
import type { EdgeHubRoutes } from './edgehub-routes.ts';
import type { GatewayMetrics } from './metrics.ts';
import { ModuleInputEndpoint } from './module-endpoint.ts';

/**
 * The gateway's one telemetry path: what the engine accepts goes through the routes into the
 * store (acknowledged once durable), and one pump per endpoint delivers it ($upstream to the
 * parent, module inputs to the modules). A child gateway's batch may instead go to the parent
 * as it came (direct-forward.ts).
 */

const log = childLog('gateway');

/** At most one "not forwarded: no route" line this often. */
const NO_ROUTE_LOG_MS = 10_000;

export interface TelemetryPathParts {
  /** The edge device this gateway is (module inputs are its modules'). */
  deviceId: string;
  store: MessageStore;
  routes: EdgeHubRoutes;
  link: ParentLink;
  metrics: GatewayMetrics;
}

export interface TelemetryPath {
  /** Where the engine hands the telemetry it accepts. */
  readonly sink: TelemetrySink;
  /** Starts a pump for every endpoint the store or the routes name, and for each one routes add later. */
  startPumps(engine: Engine): void;
  /** A module subscribed to its inputs: its endpoints look for messages now. */
  pokeModuleInputs(moduleId: string | undefined): void;
  stopPumps(): Promise<void>;
}

/** A digest of a message's body and application properties (store/resend-window.ts tells a resend from a reused id by it). */
function contentPrint(message: Message): string {
  const h = createHash('sha256').update(message.body);
  for (const name in message.properties) h.update(`\0${name}\0${message.properties[name]}`);
  return h.digest('base64').slice(0, 22);
}

export function telemetryPath(parts: TelemetryPathParts): TelemetryPath {
  const { deviceId, store, routes, link, metrics } = parts;

  let noRoute = { count: 0, lastLog: 0 };
  const notForwarded = (sender: string) => {
    metrics.dropped.inc({ reason: 'no_route' });
    noRoute.count++;
    const now = Date.now();
    if (now - noRoute.lastLog < NO_ROUTE_LOG_MS) return;
    const why = routes.configured ? 'no route matches it' : `no routes are configured; ${routes.howToConfigure}`;
    log.warn({ sender, notForwardedSinceLastLine: noRoute.count }, `message from ${sender} not forwarded: ${why}`);
    noRoute = { count: 0, lastLog: now };
  };
  const storeError = (err: unknown): never => {
    if (err instanceof StoreFullError) {
      const until = err.limit === 'disk' ? 'until space is freed on its disk' : 'until the upstream drains it';
      throw new EngineError(
        'store-full',
        `the gateway's message store is full (${err.message}); messages are refused ${until}`,
      );
    }
    throw new EngineError('unavailable', `the gateway could not store the message: ${(err as Error).message}`);
  };
  // The route table hands out the same deliveries for every message of a source: so do we.
  const targetLists = new WeakMap<readonly Delivery[], AppendTarget[]>();
  const targetsOf = (deliveries: readonly Delivery[]): AppendTarget[] => {
    let targets = targetLists.get(deliveries);
    if (!targets) {
      targets = deliveries.map((d) => ({ endpoint: d.endpoint.id, priority: d.priority, ttlSecs: d.ttlSecs }));
      targetLists.set(deliveries, targets);
    }
    return targets;
  };
  /**
   * Where one message goes: an entry to store, the storing of its first copy to wait for (a
   * device's resend), or undefined (it goes nowhere). `via` names the connection it came on.
   * A child gateway's resends were taken out before (the engine's appendOnce).
   */
  const routeOne = (
    auth: AuthResult,
    message: Message,
    origin?: ForwardedOrigin,
    via?: string,
  ): AppendEntry | Promise<unknown> | undefined => {
    // Taken by the parent already, passed on as it came: nothing more to do.
    if (origin && direct?.isPassed(origin)) return undefined;
    const stored = storedMessageOf(auth, message);
    // A device sending again what is stored already, its acknowledgement lost (store/resend-window.ts).
    let resend: ResendKey | undefined;
    if (!origin && via !== undefined && message.messageId) {
      resend = { sender: stored.sender, messageId: message.messageId, via, print: contentPrint(message) };
      const original = store.resendOriginal(resend);
      if (original) {
        metrics.resends.inc();
        return original;
      }
    }
    const deliveries = routes.table.match(stored);
    if (deliveries.length === 0) notForwarded(stored.sender);
    // Going nowhere, a forwarded message still has its origin recorded: its stream stays unbroken.
    if (deliveries.length === 0 && !origin) return undefined;
    const entry: AppendEntry = { message: stored, targets: targetsOf(deliveries) };
    if (origin) entry.origin = origin;
    if (resend) entry.resend = resend;
    return entry;
  };
  const runId = randomUUID().slice(0, 8);
  let requests = 0;
  // A child gateway's batch is stored in one commit and answered once.
  const storeItems = (items: readonly TelemetryItem[]): Promise<void> => {
    const entries: AppendEntry[] = [];
    const waits: Array<Promise<unknown>> = [];
    // Unique across runs: after a restart every connection is a new one.
    const request = items.some((i) => i.via === undefined) ? `${runId}/r${++requests}` : undefined;
    for (const i of items) {
      mark('gw.append', i.message.body);
      const r = routeOne(i.auth, i.message, i.origin, i.via === undefined ? request : `${runId}/${i.via}`);
      if (tracingOrigins)
        traceOrigin('gw.store', {
          id: i.message.messageId,
          origin: i.origin,
          resend: r instanceof Promise,
          none: r === undefined,
        });
      if (r === undefined) continue;
      if (r instanceof Promise) waits.push(r);
      else entries.push(r);
    }
    if (entries.length > 0) waits.push(entries.length === 1 ? store.append(entries[0]!) : store.appendAll(entries));
    if (waits.length === 0) return Promise.resolve();
    const durable = (waits.length === 1 ? waits[0]! : Promise.all(waits)).then(() => undefined, storeError);
    if (tracing)
      void durable.then(
        () => items.forEach((i) => mark('gw.durable', i.message.body)),
        () => {},
      );
    return durable;
  };
  // ... unless it can go to the parent as it came (edge/direct-forward.ts).
  const direct =
    link.direct &&
    new DirectForwarder({
      direct: link.direct,
      store,
      upstreamOnly: (auth, message) => {
        const deliveries = routes.table.match(storedMessageOf(auth, message));
        return deliveries.length === 1 && deliveries[0]!.endpoint.id === '$upstream';
      },
      storeBatch: (items) => appendOnce(sink, items).then(() => undefined),
      passed: (n) => {
        metrics.passedOn.inc(n);
        metrics.sent.inc({ endpoint: '$upstream' }, n);
      },
      log,
    });
  // The engine's sink over the store: its failures reach senders as EngineErrors (storeError),
  // those of the first copy a resend waits for included.
  const sink: TelemetrySink = {
    offer: (items, batch) => {
      if (tracing) for (const i of items) mark('gw.offer', i.message.body);
      metrics.received.inc(items.length);
      return batch && direct?.forward(items, batch);
    },
    append: storeItems,
    whenDurable: () => store.whenDurable().catch(storeError),
    isForwardedStored: (origin) => store.isForwardedStored(origin),
    forwardedInFlight: (origin) => store.forwardedInFlight(origin)?.catch(storeError),
    storeFull: () => store.storeFull(),
  };

  const moduleEndpoints = new Map<string, ModuleInputEndpoint>();
  const pumps = new Map<string, EndpointPump>();
  const startPumps = (engine: Engine) => {
    const counted = (ep: DeliveryEndpoint): DeliveryEndpoint =>
      countedEndpoint(ep, (n) => metrics.sent.inc({ endpoint: ep.name }, n));
    const ensurePump = (name: string) => {
      if (pumps.has(name)) return;
      let ep: DeliveryEndpoint;
      if (name === '$upstream') ep = link.telemetryEndpoint();
      else {
        const m = /^\/modules\/([^/]+)\/inputs\/([^/]+)$/.exec(name);
        if (!m) {
          log.error(
            { endpoint: name },
            'the store holds messages for an endpoint this gateway cannot deliver to; they stay stored',
          );
          return;
        }
        const mep = new ModuleInputEndpoint(engine, deviceId, m[1]!, m[2]!);
        moduleEndpoints.set(name, mep);
        ep = mep;
      }
      const pump = new EndpointPump(store, counted(ep));
      pumps.set(name, pump);
      pump.start();
    };
    const pumpsFor = (table: RouteTable) => table.endpoints().forEach((e) => ensurePump(e.id));
    // Leftovers of earlier runs drain too, whatever the routes say now.
    for (const e of store.endpoints()) ensurePump(e);
    pumpsFor(routes.table);
    routes.on('changed', pumpsFor);
  };

  return {
    sink,
    startPumps,
    pokeModuleInputs: (moduleId) => {
      // A resumed session announces its subscriptions while its head is still connecting, and a
      // head drops what it is handed before it has acknowledged the connection: deliver on a
      // later turn, as the engine does for resumed C2D.
      setImmediate(() => {
        for (const ep of moduleEndpoints.values()) if (ep.moduleId === moduleId) ep.poke();
      });
    },
    stopPumps: async () => {
      await Promise.all([...pumps.values()].map((p) => p.stop()));
    },
  };
}
