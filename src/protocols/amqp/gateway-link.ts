import type { Delivery, Message as AmqpMessage, Receiver } from 'rhea';
import { EDGE_HUB } from '../../identity/device-id.ts';
import type { IdentityRef } from '../../model/identity.ts';
import { addressPath } from './addresses.ts';
import { AmqpRefusal, amqpErrorOf, CONDITION } from './errors.ts';
import { CreditWindow } from './links.ts';
import type { LinkContext, LinkRoute } from './types.ts';

/**
 * The links a child gateway attaches under its own `$edgeHub` credential to speak for everyone
 * below it (relay-link.ts, presence-link.ts): `/devices/{edge}/modules/$edgeHub/{kind}`.
 */

/** The address of gateway `edgeDeviceId`'s link of `kind`. */
export function gatewayLinkAddress(edgeDeviceId: string, kind: string): string {
  return `/devices/${encodeURIComponent(edgeDeviceId)}/modules/${EDGE_HUB}/${kind}`;
}

/** What a gateway link does with its deliveries. */
export interface GatewayLinkHandler {
  /** `settle()` accepts the delivery, `settle(err)` rejects it with the error's condition; either gives its credit back. */
  message(msg: AmqpMessage, delivery: Delivery, settle: (err?: unknown) => void): void;
  /** The link is gone (detach, session end, connection loss). */
  closed?(): void;
}

/**
 * A receiver route for the gateway links of `kind`: taken only with the gateway's credential on
 * the connection, given `credit` deliveries at a time, and authorized while that credential lives.
 */
export function gatewayLinkRoute(
  kind: string,
  credit: number,
  open: (ctx: LinkContext, edge: IdentityRef) => GatewayLinkHandler,
): LinkRoute {
  const address = new RegExp(`^/devices/([^/]+)/modules/\\$edgehub/${kind}$`, 'i');
  return {
    name: kind,
    role: 'receiver',
    match: (_path, raw) => {
      const m = address.exec(addressPath(raw));
      if (!m) return undefined;
      try {
        const deviceId = decodeURIComponent(m[1]!);
        return deviceId ? { deviceId, moduleId: EDGE_HUB } : undefined;
      } catch {
        return undefined;
      }
    },
    open(ctx, params) {
      const edge = params as IdentityRef;
      if (!ctx.conn.claims.identity(edge))
        throw new AmqpRefusal(
          CONDITION.unauthorized,
          `the ${kind} link of ${edge.deviceId} needs its ${EDGE_HUB} credential on this connection first`,
        );
      const window = new CreditWindow(ctx.link as Receiver, credit);
      window.start();
      const handler = open(ctx, edge);
      return {
        authorized: () => ctx.conn.claims.identity(edge) !== undefined,
        message(msg, delivery) {
          window.took();
          handler.message(msg, delivery, (err) => {
            if (err === undefined) delivery.accept();
            else delivery.reject(amqpErrorOf(err) as never);
            window.done();
          });
        },
        closed: () => handler.closed?.(),
      };
    },
  };
}
