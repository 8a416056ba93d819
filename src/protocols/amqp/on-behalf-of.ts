import type { AuthKind, AuthResult, IdentityRef } from '../../engine/types.ts';
import { EngineError } from '../../engine/errors.ts';
import { authMethodText, parseResourcePath } from '../../identity/authenticate.ts';
import { EDGE_HUB } from '../../identity/device-id.ts';
import { parseSasToken, splitAudience } from '../../identity/sas.ts';
import {
  ScopeError,
  buildAuthChain,
  chainVoidReason,
  formatAuthChain,
  scopeViewOf,
  validateAuthChain,
  type ScopeDevice,
  type ScopeModule,
  type ScopeView,
} from '../../identity/scope.ts';
import { describeIdentity, identityKey } from './addresses.ts';
import type { IdentityClaim } from './claims.ts';
import type { AmqpConnection } from './connection.ts';
import { AmqpRefusal, CONDITION, amqpErrorOf } from './errors.ts';
import type { LinkContext } from './links.ts';

/**
 * The parent's side of on-behalf-of: an edge hub below authenticates with its own
 * `{edge}/$edgeHub` credential and acts for an identity in its scope.
 *
 * On the wire (as the IoT Edge hub's cloud proxy does it through the C# device SDK):
 * - CBS `put-token` with `name` = the TARGET's audience (`{hub}/devices/{leaf}` or
 *   `.../modules/{m}`) and, as the body, the gateway's own SAS token (audience
 *   `{hub}/devices/{edge}/modules/$edgeHub`). The name and the token's audience differ: that
 *   is what marks the request as on-behalf-of.
 * - every link of the target carries the link property `com.microsoft:auth-chain`
 *   (`leaf;...;edge`, target first, acting edge last).
 *
 * Here, the put-token is accepted when the token is valid for `{edge}/$edgeHub`, the target is
 * registered and enabled, and the edge device appears on the target's chain as this node knows
 * it (no disabled edge device on the way); the connection then holds a claim for the TARGET,
 * so its links behave exactly like the device's own. A refused put-token answers 401/404 with
 * the reason, and links for that target on the same connection are refused with the same
 * reason (amqp:unauthorized-access). Each link's auth chain is validated at attach. When the
 * registry changes (a device moved, an edge device disabled), live on-behalf-of claims are
 * checked again and dropped when they no longer hold.
 */

export const AUTH_CHAIN_PROPERTY = 'com.microsoft:auth-chain';

/**
 * Where the node looks identities up: the hub's registry (`registryIdentitySource`) or a
 * gateway's scope cache. Structurally a subset of the scope API's IdentitySource.
 */
export interface OnBehalfOfSource {
  getDevice(deviceId: string): ScopeDevice | undefined;
  getModule(deviceId: string, moduleId: string): ScopeModule | undefined;
  edgeByScope(scope: string): ScopeDevice | undefined;
  childrenOfScope(scope: string): ScopeDevice[];
  onIdentity(listener: (deviceId: string, moduleId: string | undefined) => void): () => void;
  /** A gateway asks its own parent for an identity it does not know yet. */
  fetchUpstream?(target: IdentityRef, claimedChain: readonly string[]): Promise<void>;
}

interface OnBehalfOf {
  actorEdgeId: string;
  chain: string[];
}

/** Claims this module granted, with the edge device acting for the target. */
const granted = new WeakMap<IdentityClaim, OnBehalfOf>();
/** Per connection: why on-behalf-of was refused for a target (for the link refusals that follow). */
const refusals = new WeakMap<AmqpConnection, Map<string, string>>();
/** Per connection: the on-behalf-of claims it holds, for re-checks after registry changes. */
const live = new WeakMap<AmqpConnection, Map<string, IdentityClaim>>();
/** Per source: the connections holding on-behalf-of claims from it. */
const watchers = new WeakMap<OnBehalfOfSource, Set<AmqpConnection>>();

function sourceOf(conn: AmqpConnection): OnBehalfOfSource | undefined {
  return conn.shared.onBehalfOf;
}


/** The identity a CBS `name` (an audience, possibly URL-encoded or with a scheme) names. */
export function audienceIdentity(name: string): IdentityRef | undefined {
  let text = name.trim();
  if (/%2f/i.test(text)) {
    try {
      text = decodeURIComponent(text);
    } catch {
      return undefined;
    }
  }
  return parseResourcePath(splitAudience(text).path);
}

function sameIdentity(a: IdentityRef, b: IdentityRef): boolean {
  return a.deviceId === b.deviceId && a.moduleId === b.moduleId;
}

function authKindOf(type: string | undefined): AuthKind {
  if (type === 'selfSigned') return 'x509-thumbprint';
  if (type === 'certificateAuthority') return 'x509-ca';
  return 'sas';
}

function remember(conn: AmqpConnection, target: IdentityRef, why: string): void {
  let m = refusals.get(conn);
  if (!m) {
    m = new Map();
    refusals.set(conn, m);
  }
  m.set(identityKey(target), why);
}

/**
 * CBS hook. Returns undefined when the put-token is not on-behalf-of (the token names the same
 * identity as `name`, or is not an edge hub's): the ordinary path handles it. Otherwise returns
 * the claim for the target, or throws the refusal (EngineError / AmqpRefusal).
 */
export async function onBehalfOfClaim(conn: AmqpConnection, name: string | undefined, token: string): Promise<IdentityClaim | undefined> {
  if (!name) return undefined;
  let sr: string;
  try {
    const parsed = parseSasToken(token.trim());
    if (parsed.skn) return undefined;
    sr = parsed.sr;
  } catch {
    return undefined;
  }
  const actor = parseResourcePath(splitAudience(sr).path);
  const target = audienceIdentity(name);
  if (!actor || !target || sameIdentity(actor, target) || actor.moduleId !== EDGE_HUB) return undefined;
  try {
    const claim = await grant(conn, actor.deviceId, target, token.trim());
    refusals.get(conn)?.delete(identityKey(target));
    return claim;
  } catch (err) {
    const why = amqpErrorOf(err).description;
    remember(conn, target, why);
    conn.log.warn({ actor: `${actor.deviceId}/${EDGE_HUB}`, target: describeIdentity(target), reason: why }, 'on-behalf-of refused');
    throw err;
  }
}

async function grant(conn: AmqpConnection, actorEdgeId: string, target: IdentityRef, token: string): Promise<IdentityClaim> {
  const source = sourceOf(conn);
  if (!source) {
    throw new EngineError('forbidden', `this node does not accept on-behalf-of credentials (${actorEdgeId}/${EDGE_HUB} acting for ${describeIdentity(target)})`);
  }
  // The gateway's own credential first: nothing about the target is told to a stranger.
  const actorAuth = await conn.shared.checker.authenticate({ deviceId: actorEdgeId, moduleId: EDGE_HUB, sasToken: token });
  const view = scopeViewOf(source);
  const actor = view.device(actorEdgeId);
  if (!actor?.isEdge) throw new EngineError('forbidden', `device ${actorEdgeId} is not an IoT Edge device, so it cannot act on behalf of ${describeIdentity(target)}`);

  if (!source.getDevice(target.deviceId) && source.fetchUpstream) {
    await source.fetchUpstream(target, [identityKey(target), actorEdgeId]);
  }
  const device = source.getDevice(target.deviceId);
  if (!device) throw new EngineError('not-found', `device ${target.deviceId} is not registered`);
  const chain = buildAuthChain(view, target, actorEdgeId);
  if (!chain) throw new EngineError('forbidden', `${describeIdentity(target)} is not in this gateway's scope (edge device ${actorEdgeId})`);
  const voided = chainVoidReason(view, chain);
  if (voided) throw new EngineError('forbidden', `${describeIdentity(target)} cannot be reached through ${actorEdgeId}: ${voided}`);

  let record: ScopeDevice | ScopeModule = device;
  if (target.moduleId !== undefined) {
    const mod = source.getModule(target.deviceId, target.moduleId);
    if (!mod) throw new EngineError('not-found', `${describeIdentity(target)} is not registered`);
    record = mod;
  }
  if (device.status === 'disabled') throw new EngineError('disabled', `device ${target.deviceId} is disabled`);
  if (record !== device && record.status === 'disabled') throw new EngineError('disabled', `${describeIdentity(target)} is disabled`);

  const auth: AuthResult = {
    identity: target.moduleId === undefined ? { deviceId: target.deviceId } : { deviceId: target.deviceId, moduleId: target.moduleId },
    kind: authKindOf(record.authentication?.type),
    expiresAt: actorAuth.expiresAt,
    generationId: record.generationId,
    authMethod: authMethodText(target.moduleId === undefined ? 'device' : 'module', 'sas'),
  };
  const claim: IdentityClaim = { kind: 'identity', identity: auth.identity, auth, source: 'cbs', expiresAt: actorAuth.expiresAt, onBehalfOf: true };
  granted.set(claim, { actorEdgeId, chain });
  track(conn, source, claim);
  conn.log.info({ actor: `${actorEdgeId}/${EDGE_HUB}`, target: describeIdentity(target), chain: formatAuthChain(chain) }, 'on-behalf-of accepted');
  return claim;
}

/**
 * Link hook, called when a device link attaches: refuses links for a target whose
 * on-behalf-of put-token was refused (with that reason), and checks the auth chain of links
 * that rely on an on-behalf-of claim. Throws AmqpRefusal.
 */
export function checkOnBehalfOfLink(ctx: LinkContext, identity: IdentityRef): void {
  const conn = ctx.conn;
  const claim = conn.claims.identity(identity);
  if (!claim) {
    const why = refusals.get(conn)?.get(identityKey(identity));
    if (why) throw new AmqpRefusal(CONDITION.unauthorized, why);
    return;
  }
  const obo = granted.get(claim);
  if (!obo) return;
  const source = sourceOf(conn);
  const raw = ctx.properties[AUTH_CHAIN_PROPERTY];
  if (raw === undefined || raw === null || String(raw).trim() === '') {
    throw new AmqpRefusal(
      CONDITION.unauthorized,
      `${describeIdentity(identity)} is reached on behalf of edge device ${obo.actorEdgeId}, but the link carries no ${AUTH_CHAIN_PROPERTY} property`,
    );
  }
  if (!source) throw new AmqpRefusal(CONDITION.unauthorized, 'this node does not accept on-behalf-of credentials');
  try {
    validateAuthChain(scopeViewOf(source), String(raw), obo.actorEdgeId, identity);
  } catch (err) {
    if (!(err instanceof ScopeError)) throw err;
    const text =
      err.code === 'out-of-scope' || err.code === 'not-found' || err.code === 'too-deep'
        ? `${describeIdentity(identity)} is not in this gateway's scope: ${err.message}`
        : `the auth chain "${String(raw)}" does not fit ${describeIdentity(identity)}: ${err.message}`;
    throw new AmqpRefusal(CONDITION.unauthorized, text);
  }
}

function track(conn: AmqpConnection, source: OnBehalfOfSource, claim: IdentityClaim): void {
  let claims = live.get(conn);
  if (!claims) {
    claims = new Map();
    live.set(conn, claims);
    conn.onClosed(() => {
      live.delete(conn);
      watchers.get(source)?.delete(conn);
    });
  }
  claims.set(identityKey(claim.identity), claim);
  let conns = watchers.get(source);
  if (!conns) {
    conns = new Set();
    watchers.set(source, conns);
    let queued = false;
    source.onIdentity(() => {
      // One re-check for a burst of changes (a bulk import sends many).
      if (queued) return;
      queued = true;
      setImmediate(() => {
        queued = false;
        for (const c of [...(watchers.get(source) ?? [])]) recheck(c, source);
      });
    });
  }
  conns.add(conn);
}

/** Drops on-behalf-of claims that no longer hold; their links are detached and later put-tokens refused. */
function recheck(conn: AmqpConnection, source: OnBehalfOfSource): void {
  const claims = live.get(conn);
  if (!claims || conn.closed) return;
  const view = scopeViewOf(source);
  for (const [key, claim] of [...claims]) {
    const obo = granted.get(claim);
    if (!obo || conn.claims.identity(claim.identity) !== claim) {
      claims.delete(key);
      continue;
    }
    const chain = buildAuthChain(view, claim.identity, obo.actorEdgeId);
    const why = !chain
      ? `${describeIdentity(claim.identity)} is no longer in this gateway's scope (edge device ${obo.actorEdgeId})`
      : chainVoidReason(view, chain);
    if (!why) continue;
    claims.delete(key);
    remember(conn, claim.identity, why);
    conn.log.info({ actor: obo.actorEdgeId, target: describeIdentity(claim.identity), reason: why }, 'on-behalf-of withdrawn');
    // Replacing the claim with a lapsed copy takes the connection's own path for an expired
    // credential: the target's links are detached and its session ends.
    conn.claims.put({ ...claim, expiresAt: Date.now() - 1 });
  }
}
