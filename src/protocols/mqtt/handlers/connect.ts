import type mqtt from 'mqtt-packet';
import { describeIdentity } from '../../../model/identity.ts';
import { EngineError } from '../../../model/errors.ts';
import type { AuthResult, IdentityRef } from '../../../model/identity.ts';
import { EDGE_HUB } from '../../../identity/device-id.ts';
import {
  actingEdgeOf,
  claimedChainRefusal,
  grantOnBehalfOf,
  onScopeChange,
  withdrawalReason,
} from '../../../identity/on-behalf-of.ts';
import { childLog, wireText } from '../../../util/log.ts';
import { ConnectionSessionHandler } from '../session-handler.ts';
import { identityFromClientId, parseUsername, sameIdentity } from '../topics.ts';
import { CONNACK, type ClientConnection } from '../types.ts';

const log = childLog('mqtt');

/** The user name parameter naming the auth chain of an on-behalf-of CONNECT. */
const AUTH_CHAIN_PARAM = 'auth-chain';

/** CONNECT: who the client is, its credential, then an engine session (the connection's timer is stopped already). */
export async function onConnect(conn: ClientConnection, p: mqtt.IConnectPacket): Promise<void> {
  if (p.protocolVersion !== 4) {
    return conn.refuse(`MQTT protocol level ${p.protocolVersion} is not supported (3.1.1 only)`, CONNACK.badProtocol);
  }
  const identity = identityFromClientId(p.clientId);
  if (!identity)
    return conn.refuse(
      `client id "${wireText(p.clientId)}" does not name a device or module`,
      CONNACK.identifierRejected,
    );
  conn.identity = identity;
  let authChain: string | undefined;
  if (p.username !== undefined) {
    const u = parseUsername(p.username);
    if (!u || u.clientId !== p.clientId) {
      return conn.refuse(
        `user name "${wireText(p.username)}" does not name client "${wireText(p.clientId)}"`,
        CONNACK.badCredentials,
      );
    }
    authChain = u.query.get(AUTH_CHAIN_PARAM);
  }
  const sasToken = p.password ? p.password.toString('utf8') : undefined;
  const clientCertificate = conn.clientCertificate;
  if (!sasToken && !clientCertificate) {
    return conn.refuse('neither a SAS token (password) nor a client certificate was given', CONNACK.badCredentials);
  }
  const actorEdgeId = sasToken === undefined ? undefined : actingEdgeOf(sasToken);
  const onBehalfOf =
    actorEdgeId !== undefined && !sameIdentity(identity, { deviceId: actorEdgeId, moduleId: EDGE_HUB });
  let auth: AuthResult;
  if (onBehalfOf) {
    const granted = await grant(conn, actorEdgeId, identity, sasToken!, authChain);
    if (!granted) return;
    auth = granted;
  } else {
    try {
      auth = await conn.engine.authenticate({
        ...identity,
        sasToken,
        clientCertificate: sasToken ? undefined : clientCertificate,
      });
    } catch (err) {
      if (err instanceof EngineError)
        return conn.refuse(`authentication failed (${err.code}): ${err.message}`, CONNACK.notAuthorized);
      log.error({ err, remote: conn.remote }, 'authentication error');
      return conn.refuse('authentication error', CONNACK.unavailable);
    }
  }
  if (conn.state === 'closed') return;
  // While the store cannot take telemetry, a device let in would be dropped at its first
  // PUBLISH and reconnect at once; "server unavailable" makes the SDKs back off instead.
  const storeFull = conn.engine.storeFull();
  if (storeFull) return conn.refuse(storeFull, CONNACK.unavailable);
  const handler = new ConnectionSessionHandler(conn);
  let session;
  try {
    session = await conn.engine.connect(auth, handler, {
      protocol: conn.protocol,
      cleanSession: p.clean !== false,
      remote: conn.remote,
      viaGateway: onBehalfOf,
    });
  } catch (err) {
    // An engine refusal (e.g. the gateway's MaxConnectedClients) says why in its message.
    if (err instanceof EngineError) return conn.refuse(err.message, CONNACK.unavailable);
    log.warn({ err, who: conn.who() }, 'session could not be opened');
    return conn.refuse('the hub is not accepting connections', CONNACK.unavailable);
  }
  conn.established(session, p.keepalive);
}

/**
 * An edge hub below connects for `target` with its own `{edge}/$edgeHub` token and the
 * target's auth chain in the user name: accepted exactly when the AMQP head would accept the
 * same claim (both ask identity/on-behalf-of.ts), and dropped again when a registry change withdraws it.
 * Returns the target's credentials, or undefined after refusing the CONNECT.
 */
async function grant(
  conn: ClientConnection,
  actorEdgeId: string,
  target: IdentityRef,
  token: string,
  authChain: string | undefined,
): Promise<AuthResult | undefined> {
  const source = conn.onBehalfOfSource;
  const actor = `${actorEdgeId}/${EDGE_HUB}`;
  const refuse = (why: string) => {
    conn.refuse(`on-behalf-of by ${actor} refused: ${why}`, CONNACK.notAuthorized);
    return undefined;
  };
  let auth: AuthResult;
  try {
    auth = (
      await grantOnBehalfOf({
        source,
        authenticate: (req) => conn.engine.authenticate(req),
        actorEdgeId,
        target,
        token,
      })
    ).auth;
  } catch (err) {
    if (err instanceof EngineError) return refuse(err.message);
    log.error({ err, remote: conn.remote }, 'on-behalf-of check failed');
    conn.refuse('authentication error', CONNACK.unavailable);
    return undefined;
  }
  const chainRefusal = claimedChainRefusal(
    source,
    authChain,
    actorEdgeId,
    target,
    `the user name carries no ${AUTH_CHAIN_PARAM} parameter`,
  );
  if (chainRefusal) return refuse(chainRefusal);
  if (conn.state === 'closed') return undefined;
  conn.unwatch = onScopeChange(source!, () => {
    if (conn.state === 'closed') return;
    const why = withdrawalReason(source!, target, actorEdgeId);
    if (!why) return;
    log.info({ actor, target: describeIdentity(target), remote: conn.remote, reason: why }, 'on-behalf-of withdrawn');
    conn.forbidden(`on-behalf-of withdrawn: ${why}`);
  });
  log.info({ actor, target: describeIdentity(target), chain: authChain }, 'on-behalf-of accepted');
  return auth;
}
