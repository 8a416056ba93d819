import { describeIdentity, identityKey, identityOfKey, type IdentityRef } from '../../model/identity.ts';
import { refusals, sourceAddress, wireText } from '../../util/log.ts';
import type { IdentityState, Member } from './device-sessions.ts';
import { gatewayLinkAddress, gatewayLinkRoute } from './gateway-link.ts';
import { AmqpRefusal, amqpErrorOf, CONDITION } from './errors.ts';
import { checkOnBehalfOf } from './on-behalf-of.ts';
import type { LinkContext, LinkRoute } from './types.ts';

/**
 * A child gateway's presence link: which identities below it are connected, one transfer per
 * change, so that its parent counts them connected without a link per identity. Attaching a
 * telemetry link for each leaf only to show it connected cost both ends a link per leaf
 * (about 4.5 KB at the child) and put an attach cascade up the hierarchy in a storm's path.
 *
 * Strata's own extension, offered in the AMQP open (PRESENCE_CAPABILITY); a gateway under IoT
 * Hub attaches the links instead. A `present` transfer names an identity the connection holds a
 * claim for (a CBS put-token on behalf of it, which checked the scope) and its auth chain, and
 * is accepted once the identity's session is open; it holds that session as a link would, until
 * an `absent` transfer, the link's detach or the connection's end. A refusal (no claim, a chain
 * that does not fit, the engine refusing the session) rejects that transfer alone.
 */

export const PRESENCE_CAPABILITY = 'com.strata:presence';
/** `present` or `absent`. */
export const PRESENCE_STATE = 'x-opt-strata-presence';
/** The identity key (model/identity.ts) of whom it is about. */
export const PRESENCE_IDENTITY = 'x-opt-strata-identity';
/** The identity's auth chain, as a link of it would carry (`com.microsoft:auth-chain`). */
export const PRESENCE_AUTH_CHAIN = 'x-opt-strata-auth-chain';

const PRESENCE_CREDIT = 100;

/** The presence link's address for gateway `edgeDeviceId`. */
export function presenceAddress(edgeDeviceId: string): string {
  return gatewayLinkAddress(edgeDeviceId, 'presence');
}

export interface PresenceChange {
  identity: IdentityRef;
  present: boolean;
  authChain?: string;
}

/** The annotations of one presence transfer. */
export function presenceAnnotations(change: PresenceChange): Record<string, string> {
  const a: Record<string, string> = {
    [PRESENCE_STATE]: change.present ? 'present' : 'absent',
    [PRESENCE_IDENTITY]: identityKey(change.identity),
  };
  if (change.authChain !== undefined) a[PRESENCE_AUTH_CHAIN] = change.authChain;
  return a;
}

/** Reads a presence transfer's annotations; throws a message naming what is wrong. */
export function readPresence(annotations: Record<string, unknown> | undefined): PresenceChange {
  const state = annotations?.[PRESENCE_STATE];
  if (state !== 'present' && state !== 'absent')
    throw new Error(`a presence transfer names ${PRESENCE_STATE} as "present" or "absent"`);
  const key = annotations?.[PRESENCE_IDENTITY];
  if (typeof key !== 'string') throw new Error(`a presence transfer names its identity (${PRESENCE_IDENTITY})`);
  const identity = identityOfKey(key);
  if (!identity) throw new Error(`${PRESENCE_IDENTITY} "${key.slice(0, 60)}" is not a device or module id`);
  const chain = annotations?.[PRESENCE_AUTH_CHAIN];
  return {
    identity,
    present: state === 'present',
    ...(typeof chain === 'string' ? { authChain: chain } : {}),
  };
}

function logRefusal(ctx: LinkContext, edge: IdentityRef, fields: Record<string, unknown>): void {
  refusals.warn(
    ctx.conn.log,
    sourceAddress(ctx.conn.remote),
    { who: describeIdentity(edge), ...fields },
    'presence refused',
  );
}

export const presenceRoute: LinkRoute = gatewayLinkRoute('presence', PRESENCE_CREDIT, (ctx, edge) => {
  // What each present identity holds: its session, as a link of it would.
  const held = new Map<string, { state: IdentityState; member: Member }>();

  const release = (key: string) => {
    const h = held.get(key);
    if (!h) return;
    held.delete(key);
    h.state.leave(h.member);
  };

  const hold = async (change: PresenceChange): Promise<void> => {
    const { identity } = change;
    const key = identityKey(identity);
    if (held.has(key)) return;
    // First: a put-token refused for it says why (out of scope, disabled) better than "no claim".
    checkOnBehalfOf(ctx.conn, identity, change.authChain, `the presence transfer names no ${PRESENCE_AUTH_CHAIN}`);
    if (!ctx.conn.claims.identity(identity))
      throw new AmqpRefusal(
        CONDITION.unauthorized,
        `${edge.deviceId} is not authorized to act for ${describeIdentity(identity)} on this connection: put a token for it on $cbs first`,
      );
    const state = ctx.conn.devices.stateFor(identity);
    // The engine ending the session (replaced, disabled, the claim lapsed) lets go of it here.
    const member: Member = {
      detach: () => {
        if (held.get(key)?.member === member) held.delete(key);
      },
    };
    held.set(key, { state, member });
    try {
      await state.enter(member);
    } catch (err) {
      if (held.get(key)?.member === member) held.delete(key);
      throw err;
    }
  };

  return {
    message(msg, _delivery, settle) {
      let change: PresenceChange;
      try {
        change = readPresence((msg as { message_annotations?: Record<string, unknown> }).message_annotations);
      } catch (err) {
        logRefusal(ctx, edge, { condition: CONDITION.decode, reason: wireText((err as Error).message) });
        settle(new AmqpRefusal(CONDITION.decode, (err as Error).message));
        return;
      }
      if (!change.present) {
        release(identityKey(change.identity));
        settle();
        return;
      }
      hold(change).then(
        () => settle(),
        (err) => {
          const info = amqpErrorOf(err);
          logRefusal(ctx, edge, {
            target: describeIdentity(change.identity),
            condition: info.condition,
            reason: info.description,
          });
          settle(err);
        },
      );
    },
    closed() {
      for (const key of [...held.keys()]) release(key);
    },
  };
});
