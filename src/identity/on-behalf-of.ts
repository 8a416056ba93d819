import type { AuthKind, AuthRequest, AuthResult, IdentityRef } from '../model/identity.ts';
import { EngineError } from '../model/errors.ts';
import { authMethodText, parseResourcePath } from './authenticate.ts';
import { EDGE_HUB } from './device-id.ts';
import { parseSasToken, splitAudience } from './sas.ts';
import {
  ScopeError,
  buildAuthChain,
  chainVoidReason,
  scopeViewOf,
  validateAuthChain,
  type ScopeDevice,
  type ScopeModule,
} from './scope.ts';
import { identityKey } from '../model/identity.ts';

/**
 * The protocol-neutral half of on-behalf-of, shared by the AMQP and MQTT heads: an edge hub
 * below authenticates with its own `{edge}/$edgeHub` SAS token and acts for an identity in its
 * scope. Both heads ask the same questions here and differ only in where the parts arrive
 * (AMQP: CBS put-token and a link property; MQTT: CONNECT's client id, user name `auth-chain`
 * parameter and password) and in how a refusal reaches the wire.
 */

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

/** What a node granted an edge device acting for a target. */
export interface OnBehalfOfGrant {
  actorEdgeId: string;
  /** The target's chain up to the actor, as this node knows it. */
  chain: string[];
  /** The target's session credentials: its own identity, the actor token's expiry. */
  auth: AuthResult;
}

export function describeTarget(id: IdentityRef): string {
  return id.moduleId === undefined ? `device ${id.deviceId}` : `module ${id.deviceId}/${id.moduleId}`;
}

/**
 * The edge device a SAS token acts for: the device id when its audience is `{edge}/$edgeHub`,
 * else undefined (a policy token, an unreadable one, any other identity's).
 */
export function actingEdgeOf(token: string): string | undefined {
  let sr: string;
  try {
    const parsed = parseSasToken(token.trim());
    if (parsed.skn) return undefined;
    sr = parsed.sr;
  } catch {
    return undefined;
  }
  const actor = parseResourcePath(splitAudience(sr).path);
  return actor && actor.moduleId === EDGE_HUB ? actor.deviceId : undefined;
}

function authKindOf(type: string | undefined): AuthKind {
  if (type === 'selfSigned') return 'x509-thumbprint';
  if (type === 'certificateAuthority') return 'x509-ca';
  return 'sas';
}

/**
 * Decides whether `actorEdgeId` (proving itself with `token`) may act for `target`: the token
 * is valid for `{actor}/$edgeHub`, the actor is an edge device, the target is registered and
 * enabled (a gateway asks its own parent first when it does not know the target), and the
 * actor is on the target's auth chain with no disabled edge device on it. Throws EngineError
 * (forbidden, not-found, disabled, or the authentication's own) saying why.
 */
export async function grantOnBehalfOf(o: {
  source: OnBehalfOfSource | undefined;
  authenticate: (req: AuthRequest) => Promise<AuthResult>;
  actorEdgeId: string;
  target: IdentityRef;
  token: string;
}): Promise<OnBehalfOfGrant> {
  const { source, actorEdgeId, target } = o;
  if (!source) {
    throw new EngineError(
      'forbidden',
      `this node does not accept on-behalf-of credentials (${actorEdgeId}/${EDGE_HUB} acting for ${describeTarget(target)})`,
    );
  }
  // The gateway's own credential first: nothing about the target is told to a stranger.
  const actorAuth = await o.authenticate({ deviceId: actorEdgeId, moduleId: EDGE_HUB, sasToken: o.token.trim() });
  const view = scopeViewOf(source);
  const actor = view.device(actorEdgeId);
  if (!actor?.isEdge)
    throw new EngineError(
      'forbidden',
      `device ${actorEdgeId} is not an IoT Edge device, so it cannot act on behalf of ${describeTarget(target)}`,
    );

  if (!source.getDevice(target.deviceId) && source.fetchUpstream) {
    await source.fetchUpstream(target, [identityKey(target.deviceId, target.moduleId), actorEdgeId]);
  }
  const device = source.getDevice(target.deviceId);
  if (!device) throw new EngineError('not-found', `device ${target.deviceId} is not registered`);
  const chain = buildAuthChain(view, target, actorEdgeId);
  if (!chain)
    throw new EngineError(
      'forbidden',
      `${describeTarget(target)} is not in this gateway's scope (edge device ${actorEdgeId})`,
    );
  const voided = chainVoidReason(view, chain);
  if (voided)
    throw new EngineError('forbidden', `${describeTarget(target)} cannot be reached through ${actorEdgeId}: ${voided}`);

  let record: ScopeDevice | ScopeModule = device;
  if (target.moduleId !== undefined) {
    const mod = source.getModule(target.deviceId, target.moduleId);
    if (!mod) throw new EngineError('not-found', `${describeTarget(target)} is not registered`);
    record = mod;
  }
  if (device.status === 'disabled') throw new EngineError('disabled', `device ${target.deviceId} is disabled`);
  if (record !== device && record.status === 'disabled')
    throw new EngineError('disabled', `${describeTarget(target)} is disabled`);

  const identity: IdentityRef =
    target.moduleId === undefined
      ? { deviceId: target.deviceId }
      : { deviceId: target.deviceId, moduleId: target.moduleId };
  const auth: AuthResult = {
    identity,
    kind: authKindOf(record.authentication?.type),
    expiresAt: actorAuth.expiresAt,
    generationId: record.generationId,
    authMethod: authMethodText(target.moduleId === undefined ? 'device' : 'module', 'sas'),
  };
  return { actorEdgeId, chain, auth };
}

/**
 * Checks the auth chain an actor presented for `target` (AMQP: on each link; MQTT: in the
 * CONNECT user name). Returns why it is refused, or undefined when it holds; `missing` says
 * what lacks the chain when none was given (e.g. "the link carries no ... property").
 */
export function claimedChainRefusal(
  source: OnBehalfOfSource | undefined,
  raw: unknown,
  actorEdgeId: string,
  target: IdentityRef,
  missing: string,
): string | undefined {
  if (raw === undefined || raw === null || String(raw).trim() === '') {
    return `${describeTarget(target)} is reached on behalf of edge device ${actorEdgeId}, but ${missing}`;
  }
  if (!source) return 'this node does not accept on-behalf-of credentials';
  try {
    validateAuthChain(scopeViewOf(source), String(raw), actorEdgeId, target);
    return undefined;
  } catch (err) {
    if (!(err instanceof ScopeError)) throw err;
    return err.code === 'out-of-scope' || err.code === 'not-found' || err.code === 'too-deep'
      ? `${describeTarget(target)} is not in this gateway's scope: ${err.message}`
      : `the auth chain "${String(raw)}" does not fit ${describeTarget(target)}: ${err.message}`;
  }
}

/** Why a grant no longer holds after a registry change (the target moved away, an edge device on the way disabled), or undefined. */
export function withdrawalReason(
  source: OnBehalfOfSource,
  target: IdentityRef,
  actorEdgeId: string,
): string | undefined {
  const view = scopeViewOf(source);
  const chain = buildAuthChain(view, target, actorEdgeId);
  return !chain
    ? `${describeTarget(target)} is no longer in this gateway's scope (edge device ${actorEdgeId})`
    : chainVoidReason(view, chain);
}

/** Per source: what to run after its identities changed. */
const watchers = new WeakMap<OnBehalfOfSource, Set<() => void>>();

/**
 * Runs `recheck` after identities of `source` changed, once per burst of changes (a bulk
 * import sends many): one registry subscription per source however many grants are live.
 * Returns the unsubscribe.
 */
export function onScopeChange(source: OnBehalfOfSource, recheck: () => void): () => void {
  let set = watchers.get(source);
  if (!set) {
    const listeners = new Set<() => void>();
    set = listeners;
    watchers.set(source, listeners);
    let queued = false;
    source.onIdentity(() => {
      if (queued) return;
      queued = true;
      setImmediate(() => {
        queued = false;
        for (const fn of [...listeners]) fn();
      });
    });
  }
  set.add(recheck);
  return () => set.delete(recheck);
}
