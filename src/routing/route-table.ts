/**
 * The route table: compiled routes with priority and TTL, built from `$edgeHub` desired
 * properties, and the decision of where one message goes.
 *
 * A message goes to each endpoint at most once. When several matching routes lead to the same
 * endpoint, the delivery takes the highest priority among them (lowest number); among routes
 * of that priority, the longest TTL (so no route's promise to keep the message is cut short).
 */
import { RouteConfigError, RouteSyntaxError } from './errors.ts';
import type { Endpoint } from './endpoint.ts';
import { MessageView, type RoutableMessage } from './message.ts';
import { parseRoute, sourceMatches, type ParsedRoute } from './parser.ts';

/** Priority of a route given as a plain string: below every explicit 0-9 (the original's value). */
export const DEFAULT_ROUTE_PRIORITY = 2_000_000_000;
/** Global TTL used when the desired properties give none (the value the seeds' deployments use). */
export const DEFAULT_TIME_TO_LIVE_SECS = 7200;

export interface RouteDefinition {
  name: string;
  route: string;
  /** 0 (highest) to 9; absent for plain string routes (then DEFAULT_ROUTE_PRIORITY). */
  priority?: number;
  /** 0 or absent: the global TTL. */
  timeToLiveSecs?: number;
}

export interface TableRoute extends ParsedRoute {
  readonly name: string;
  readonly priority: number;
  /** As configured; 0 means the global TTL. */
  readonly timeToLiveSecs: number;
}

export interface Delivery {
  endpoint: Endpoint;
  /** 0 is the highest; DEFAULT_ROUTE_PRIORITY for plain string routes. */
  priority: number;
  /** Seconds the message may wait for this endpoint, route TTL or else the global one; Infinity = never expires. */
  ttlSecs: number;
}

export class RouteTable {
  private readonly prefixes: string[];
  /**
   * With no WHERE anywhere in the table a message's deliveries depend on its source alone:
   * worked out once per source (a gateway has a handful) instead of once per message.
   */
  private readonly bySource: Map<string, readonly Delivery[]> | undefined;
  /** Seconds; Infinity when messages never expire. */
  readonly globalTtlSecs: number;

  /** `globalTtlSecs`: negative means messages never expire (stored as Infinity). */
  constructor(
    readonly routes: readonly TableRoute[],
    globalTtlSecs: number = DEFAULT_TIME_TO_LIVE_SECS,
  ) {
    this.globalTtlSecs = globalTtlSecs < 0 ? Infinity : globalTtlSecs;
    this.prefixes = routes.map((r) => r.sourcePrefix);
    if (routes.every((r) => r.condition.text === undefined)) this.bySource = new Map();
  }

  /** Compiles route definitions; the first bad one fails with a RouteConfigError naming it. */
  static fromDefinitions(
    defs: readonly RouteDefinition[],
    globalTtlSecs: number = DEFAULT_TIME_TO_LIVE_SECS,
  ): RouteTable {
    return new RouteTable(defs.map(compileDefinition), globalTtlSecs);
  }

  /**
   * Where a message goes: one delivery per endpoint, in the order the endpoints first appear in
   * the table. The list may be shared between messages: read it, do not change it.
   */
  match(message: RoutableMessage): readonly Delivery[] {
    if (!this.bySource) return this.evaluate(message);
    let found = this.bySource.get(message.source);
    if (found === undefined) {
      // Sources are few (devices, and each module's outputs); a flood of odd ones only costs a re-evaluation.
      if (this.bySource.size >= 1024) this.bySource.clear();
      found = this.evaluate(message);
      this.bySource.set(message.source, found);
    }
    return found;
  }

  private evaluate(message: RoutableMessage): Delivery[] {
    const view = new MessageView(message);
    const best = new Map<string, Delivery>();
    for (let i = 0; i < this.routes.length; i++) {
      const r = this.routes[i];
      if (!sourceMatches(this.prefixes[i], message.source)) continue;
      const cur = best.get(r.endpoint.id);
      if (cur !== undefined && cur.priority < r.priority) continue; // cannot improve on it; skip evaluating
      if (r.condition.evaluate(view) !== true) continue;
      const ttlSecs = r.timeToLiveSecs === 0 ? this.globalTtlSecs : r.timeToLiveSecs;
      if (cur === undefined || r.priority < cur.priority || ttlSecs > cur.ttlSecs) {
        best.set(r.endpoint.id, { endpoint: r.endpoint, priority: r.priority, ttlSecs });
      }
    }
    return [...best.values()];
  }

  /** Every distinct endpoint some route leads to. */
  endpoints(): Endpoint[] {
    const seen = new Map<string, Endpoint>();
    for (const r of this.routes) if (!seen.has(r.endpoint.id)) seen.set(r.endpoint.id, r.endpoint);
    return [...seen.values()];
  }
}

function compileDefinition(def: RouteDefinition): TableRoute {
  const priority = def.priority ?? DEFAULT_ROUTE_PRIORITY;
  if (!(Number.isInteger(priority) && ((priority >= 0 && priority <= 9) || priority === DEFAULT_ROUTE_PRIORITY))) {
    throw new RouteConfigError(
      `priority ${JSON.stringify(def.priority)} is invalid; it must be an integer from 0 (highest) to 9`,
      { routeName: def.name },
    );
  }
  const ttl = def.timeToLiveSecs ?? 0;
  if (!(Number.isInteger(ttl) && ttl >= 0 && ttl <= 0xffffffff)) {
    throw new RouteConfigError(
      `timeToLiveSecs ${JSON.stringify(def.timeToLiveSecs)} is invalid; it must be a whole number of seconds, 0 for the global TTL`,
      {
        routeName: def.name,
      },
    );
  }
  if (typeof def.route !== 'string' || def.route.trim() === '')
    throw new RouteConfigError('the route is empty', { routeName: def.name });
  let parsed: ParsedRoute;
  try {
    parsed = parseRoute(def.route);
  } catch (err) {
    if (err instanceof RouteSyntaxError)
      throw new RouteConfigError(err.message, { routeName: def.name, hint: err.hint, cause: err });
    throw err;
  }
  return { ...parsed, name: def.name, priority, timeToLiveSecs: ttl };
}

// ---- $edgeHub desired properties ----

export interface EdgeHubRoutingConfig {
  /** As given, e.g. "1.1". */
  schemaVersion: string;
  routes: RouteDefinition[];
  /** Global TTL in seconds; Infinity when the configuration gives a negative value. */
  timeToLiveSecs: number;
  /** storeAndForwardConfiguration.storeLimits.maxSizeBytes, when given. */
  maxStoreSizeBytes?: number;
}

const SUPPORTED_SCHEMAS = '1.0, 1.1, 1.2, 1.3';

/**
 * Reads `routes`, `storeAndForwardConfiguration` and `schemaVersion` from the `$edgeHub` module
 * twin's desired properties. Schema 1.0 takes routes as plain strings only (empty ones are
 * skipped) and may omit storeAndForwardConfiguration; 1.1 to 1.3 take strings or objects
 * `{route, priority, timeToLiveSecs}` and require both `routes` and `storeAndForwardConfiguration`.
 * Field names are matched case-insensitively, as the original's JSON reader does. Other fields
 * (e.g. 1.2's brokerConfiguration) are ignored here.
 */
export function parseEdgeHubDesired(
  desired: unknown,
  opts: { defaultTimeToLiveSecs?: number } = {},
): EdgeHubRoutingConfig {
  if (!isObject(desired)) throw new RouteConfigError('$edgeHub desired properties must be a JSON object');
  const rawVersion = field(desired, 'schemaVersion');
  if (rawVersion === undefined || rawVersion === null) {
    throw new RouteConfigError('$edgeHub desired properties have no schemaVersion', {
      hint: `set "schemaVersion" to one of ${SUPPORTED_SCHEMAS}`,
    });
  }
  const schemaVersion = String(rawVersion).trim();
  const v = /^(\d+)\.(\d+)(?:\.\d+){0,2}$/.exec(schemaVersion);
  if (!v || Number(v[1]) !== 1 || Number(v[2]) > 3) {
    throw new RouteConfigError(`unsupported $edgeHub schemaVersion "${schemaVersion}"`, {
      hint: `supported versions: ${SUPPORTED_SCHEMAS}`,
    });
  }
  const legacy = Number(v[2]) === 0;

  const routesRaw = field(desired, 'routes');
  const routes: RouteDefinition[] = [];
  if (routesRaw === undefined || routesRaw === null) {
    if (!legacy)
      throw new RouteConfigError(`$edgeHub desired properties (schemaVersion ${schemaVersion}) have no "routes"`);
  } else {
    if (!isObject(routesRaw)) throw new RouteConfigError('"routes" must be an object of route name to route');
    for (const [name, spec] of Object.entries(routesRaw)) {
      const def = legacy ? legacyRoute(name, spec) : routeSpec(name, spec);
      if (def !== undefined) routes.push(def);
    }
  }

  const defaultTtl = opts.defaultTimeToLiveSecs ?? DEFAULT_TIME_TO_LIVE_SECS;
  let timeToLiveSecs = defaultTtl;
  let maxStoreSizeBytes: number | undefined;
  const sf = field(desired, 'storeAndForwardConfiguration');
  if (sf === undefined || sf === null) {
    if (!legacy)
      throw new RouteConfigError(
        `$edgeHub desired properties (schemaVersion ${schemaVersion}) have no "storeAndForwardConfiguration"`,
        { hint: 'e.g. "storeAndForwardConfiguration": { "timeToLiveSecs": 7200 }' },
      );
  } else {
    if (!isObject(sf)) throw new RouteConfigError('"storeAndForwardConfiguration" must be an object');
    const ttl = field(sf, 'timeToLiveSecs');
    if (ttl !== undefined && ttl !== null) {
      if (typeof ttl !== 'number' || !Number.isInteger(ttl) || Math.abs(ttl) > 0x7fffffff) {
        throw new RouteConfigError(
          `storeAndForwardConfiguration.timeToLiveSecs ${JSON.stringify(ttl)} is not a whole number of seconds`,
        );
      }
      timeToLiveSecs = ttl;
    }
    const limits = field(sf, 'storeLimits');
    if (limits !== undefined && limits !== null) {
      const max = isObject(limits) ? field(limits, 'maxSizeBytes') : undefined;
      if (typeof max !== 'number' || !Number.isInteger(max) || max < 0) {
        throw new RouteConfigError(
          'storeAndForwardConfiguration.storeLimits.maxSizeBytes must be a whole number of bytes',
        );
      }
      maxStoreSizeBytes = max;
    }
  }
  return {
    schemaVersion,
    routes,
    timeToLiveSecs: timeToLiveSecs < 0 ? Infinity : timeToLiveSecs,
    ...(maxStoreSizeBytes !== undefined ? { maxStoreSizeBytes } : {}),
  };
}

/** parseEdgeHubDesired, then compile every route. Errors are RouteConfigError naming the route. */
export function routeTableFromEdgeHubDesired(
  desired: unknown,
  opts: { defaultTimeToLiveSecs?: number } = {},
): RouteTable {
  const cfg = parseEdgeHubDesired(desired, opts);
  return RouteTable.fromDefinitions(cfg.routes, cfg.timeToLiveSecs);
}

function legacyRoute(name: string, spec: unknown): RouteDefinition | undefined {
  if (spec === null || (typeof spec === 'string' && spec.trim() === '')) return undefined;
  if (typeof spec === 'string') return { name, route: spec };
  throw new RouteConfigError('schemaVersion 1.0 takes routes as plain strings', {
    routeName: name,
    hint: 'use schemaVersion 1.1 or later for routes with priority and timeToLiveSecs',
  });
}

function routeSpec(name: string, spec: unknown): RouteDefinition {
  if (name.trim() === '') throw new RouteConfigError('a route has an empty name');
  if (typeof spec === 'string') {
    if (spec.trim() === '') throw new RouteConfigError('the route is empty', { routeName: name });
    return { name, route: spec };
  }
  if (!isObject(spec)) {
    throw new RouteConfigError(
      'malformed route: expected a string or an object {"route": ..., "priority": 0-9, "timeToLiveSecs": n}',
      { routeName: name },
    );
  }
  const route = field(spec, 'route');
  if (typeof route !== 'string' || route.trim() === '')
    throw new RouteConfigError('the route object has no "route" text', { routeName: name });
  const def: RouteDefinition = { name, route };
  const priority = field(spec, 'priority');
  if (priority !== undefined) {
    if (typeof priority !== 'number')
      throw new RouteConfigError(`priority ${JSON.stringify(priority)} is not a number from 0 to 9`, {
        routeName: name,
      });
    def.priority = priority;
  }
  const ttl = field(spec, 'timeToLiveSecs');
  if (ttl !== undefined) {
    if (typeof ttl !== 'number')
      throw new RouteConfigError(`timeToLiveSecs ${JSON.stringify(ttl)} is not a number`, { routeName: name });
    def.timeToLiveSecs = ttl;
  }
  return def;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A field by name, case-insensitively (exact spelling first). */
function field(obj: Record<string, unknown>, name: string): unknown {
  if (Object.hasOwn(obj, name)) return obj[name];
  const lower = name.toLowerCase();
  for (const k of Object.keys(obj)) if (k.toLowerCase() === lower) return obj[k];
  return undefined;
}
