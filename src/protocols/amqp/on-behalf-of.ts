import type { IdentityRef } from '../../model/identity.ts';
import { parseResourcePath } from '../../identity/authenticate.ts';
import { EDGE_HUB } from '../../identity/device-id.ts';
import { splitAudience } from '../../identity/sas.ts';
import { formatAuthChain } from '../../identity/scope.ts';
import {
  actingEdgeOf,
  claimedChainRefusal,
  grantOnBehalfOf,
  onScopeChange,
  withdrawalReason,
  type OnBehalfOfSource,
} from '../../identity/on-behalf-of.ts';
import { describeIdentity } from '../../model/identity.ts';
import { identityKey } from '../../model/identity.ts';
import type { IdentityClaim } from './claims.ts';
import { AmqpRefusal, CONDITION, amqpErrorOf } from './errors.ts';
import type { ClientConnection, LinkContext } from './types.ts';

export type { OnBehalfOfSource } from '../../identity/on-behalf-of.ts';

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

interface OnBehalfOf {
  actorEdgeId: string;
  chain: string[];
}

/** Claims this module granted, with the edge device acting for the target. */
const granted = new WeakMap<IdentityClaim, OnBehalfOf>();
/** Per connection: why on-behalf-of was refused for a target (for the link refusals that follow). */
const refusals = new WeakMap<ClientConnection, Map<string, string>>();
/** Per connection: the on-behalf-of claims it holds, for re-checks after registry changes. */
const live = new WeakMap<ClientConnection, Map<string, IdentityClaim>>();

function sourceOf(conn: ClientConnection): OnBehalfOfSource | undefined {
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

function remember(conn: ClientConnection, target: IdentityRef, why: string): void {
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
export async function onBehalfOfClaim(
  conn: ClientConnection,
  name: string | undefined,
  token: string,
): Promise<IdentityClaim | undefined> {
  if (!name) return undefined;
  const actorEdgeId = actingEdgeOf(token);
  const target = audienceIdentity(name);
  if (actorEdgeId === undefined || !target || sameIdentity({ deviceId: actorEdgeId, moduleId: EDGE_HUB }, target))
    return undefined;
  try {
    const claim = await grant(conn, actorEdgeId, target, token.trim());
    refusals.get(conn)?.delete(identityKey(target));
    return claim;
  } catch (err) {
    const why = amqpErrorOf(err).description;
    remember(conn, target, why);
    conn.log.warn(
      { actor: `${actorEdgeId}/${EDGE_HUB}`, target: describeIdentity(target), reason: why },
      'on-behalf-of refused',
    );
    throw err;
  }
}

async function grant(
  conn: ClientConnection,
  actorEdgeId: string,
  target: IdentityRef,
  token: string,
): Promise<IdentityClaim> {
  const source = sourceOf(conn);
  const g = await grantOnBehalfOf({
    source,
    authenticate: (req) => conn.shared.checker.authenticate(req),
    actorEdgeId,
    target,
    token,
  });
  const claim: IdentityClaim = {
    kind: 'identity',
    identity: g.auth.identity,
    auth: g.auth,
    source: 'cbs',
    expiresAt: g.auth.expiresAt,
    onBehalfOf: true,
  };
  granted.set(claim, { actorEdgeId, chain: g.chain });
  track(conn, source!, claim);
  conn.log.info(
    { actor: `${actorEdgeId}/${EDGE_HUB}`, target: describeIdentity(target), chain: formatAuthChain(g.chain) },
    'on-behalf-of accepted',
  );
  return claim;
}

/**
 * Link hook, called when a device link attaches: refuses links for a target whose
 * on-behalf-of put-token was refused (with that reason), and checks the auth chain of links
 * that rely on an on-behalf-of claim. Throws AmqpRefusal.
 */
export function checkOnBehalfOfLink(ctx: LinkContext, identity: IdentityRef): void {
  checkOnBehalfOf(
    ctx.conn,
    identity,
    ctx.properties[AUTH_CHAIN_PROPERTY],
    `the link carries no ${AUTH_CHAIN_PROPERTY} property`,
  );
}

/** The same check for what names an identity and its auth chain other than a link (presence-link.ts). */
export function checkOnBehalfOf(conn: ClientConnection, identity: IdentityRef, chain: unknown, missing: string): void {
  const claim = conn.claims.identity(identity);
  if (!claim) {
    const why = refusals.get(conn)?.get(identityKey(identity));
    if (why) throw new AmqpRefusal(CONDITION.unauthorized, why);
    return;
  }
  const obo = granted.get(claim);
  if (!obo) return;
  const refusal = claimedChainRefusal(sourceOf(conn), chain, obo.actorEdgeId, identity, missing);
  if (refusal) throw new AmqpRefusal(CONDITION.unauthorized, refusal);
}

function track(conn: ClientConnection, source: OnBehalfOfSource, claim: IdentityClaim): void {
  let claims = live.get(conn);
  if (!claims) {
    claims = new Map();
    live.set(conn, claims);
    const unwatch = onScopeChange(source, () => recheck(conn, source));
    conn.onClosed(() => {
      live.delete(conn);
      unwatch();
    });
  }
  claims.set(identityKey(claim.identity), claim);
}

/** Drops on-behalf-of claims that no longer hold; their links are detached and later put-tokens refused. */
function recheck(conn: ClientConnection, source: OnBehalfOfSource): void {
  const claims = live.get(conn);
  if (!claims || conn.closed) return;
  for (const [key, claim] of [...claims]) {
    const obo = granted.get(claim);
    if (!obo || conn.claims.identity(claim.identity) !== claim) {
      claims.delete(key);
      continue;
    }
    const why = withdrawalReason(source, claim.identity, obo.actorEdgeId);
    if (!why) continue;
    claims.delete(key);
    remember(conn, claim.identity, why);
    conn.log.info(
      { actor: obo.actorEdgeId, target: describeIdentity(claim.identity), reason: why },
      'on-behalf-of withdrawn',
    );
    // Replacing the claim with a lapsed copy takes the connection's own path for an expired
    // credential: the target's links are detached and its session ends.
    conn.claims.put({ ...claim, expiresAt: Date.now() - 1 });
  }
}
