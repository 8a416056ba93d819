import type { TelemetryItem } from '../../engine/types.ts';
import { describeIdentity, identityKey, type IdentityRef } from '../../model/identity.ts';
import type { ForwardedBatch } from '../../model/message.ts';
import { refusals, sourceAddress, wireText } from '../../util/log.ts';
import { BATCH_FORMAT, readOrigin, readRelaySenders } from './batch.ts';
import { decodeBatch } from './decode-message.ts';
import { gatewayLinkAddress, gatewayLinkRoute } from './gateway-link.ts';
import { AmqpRefusal, amqpErrorOf, CONDITION } from './errors.ts';
import type { LinkContext, LinkRoute } from './types.ts';

/**
 * A child gateway's relay link: one link carrying the telemetry of every identity the gateway
 * acts for, as batches whose messages name their sender (batch.ts, RELAY_SENDERS). It replaces
 * a transfer per sender and a link per sender with a transfer per batch of the gateway's store,
 * whoever sent its messages, which is most of what passing telemetry up a hierarchy costs.
 *
 * Strata's own extension, offered to children in the AMQP open (RELAY_CAPABILITY): a child uses
 * it only when its parent offers it, and IoT Hub does not, so a gateway under IoT Hub sends on
 * each sender's link as the IoT Edge hub does.
 *
 * Authorization is the per-identity one: the link is the gateway's own
 * (`/devices/{edge}/modules/$edgeHub/relay`, attached under its `$edgeHub` credential), and each
 * message is taken only for a sender the connection holds a live claim for, the one a CBS
 * put-token on behalf of it gave (on-behalf-of.ts checked then that the sender is in the
 * gateway's scope). A batch naming any other sender is refused whole with
 * amqp:unauthorized-access; the child then puts its tokens again before the next try, and drops
 * the messages of a sender the parent refuses for good.
 */

export const RELAY_CAPABILITY = 'com.strata:relay';
const RELAY_CREDIT = 100;

/** The relay link's address for gateway `edgeDeviceId`. */
export function relayAddress(edgeDeviceId: string): string {
  return gatewayLinkAddress(edgeDeviceId, 'relay');
}

function refuse(ctx: LinkContext, edge: IdentityRef, condition: string, description: string): AmqpRefusal {
  refusals.warn(
    ctx.conn.log,
    sourceAddress(ctx.conn.remote),
    { who: describeIdentity(edge), condition, reason: wireText(description) },
    'relay batch refused',
  );
  return new AmqpRefusal(condition, description);
}

/** The items of one relay transfer, or the refusal that answers it. */
function itemsOf(
  ctx: LinkContext,
  edge: IdentityRef,
  payload: Buffer,
): { items: TelemetryItem[]; batch?: ForwardedBatch } {
  let decoded;
  try {
    decoded = decodeBatch(payload);
  } catch (err) {
    throw refuse(ctx, edge, CONDITION.decode, `unreadable relay batch: ${(err as Error).message}`);
  }
  const { messages, annotations } = decoded;
  const { senders, problem: sendersProblem } = readRelaySenders(annotations, messages.length);
  if (!senders) throw refuse(ctx, edge, CONDITION.decode, sendersProblem!);
  const { origin, problem } = readOrigin(annotations, messages.length);
  if (problem) throw refuse(ctx, edge, CONDITION.decode, `the relay batch names a wrong origin: ${problem}`);
  const now = Date.now();
  const items: TelemetryItem[] = [];
  // Keyed per child gateway: a stream is the child's store, which only that gateway sends from.
  const stream = origin && `${identityKey(edge)}|${origin.stream}`;
  for (let i = 0; i < messages.length; i++) {
    const sender = senders[i]!;
    const claim = ctx.conn.claims.identity(sender, now);
    if (!claim)
      throw refuse(
        ctx,
        edge,
        CONDITION.unauthorized,
        `${edge.deviceId} is not authorized to act for ${describeIdentity(sender)} on this connection: put a token for it on $cbs first`,
      );
    const message = messages[i]!;
    if (origin) {
      const prev = i === 0 ? origin.prev : origin.seqs[i - 1]!;
      items.push({ auth: claim.auth, message, origin: { stream: stream!, seq: origin.seqs[i]!, prev } });
    } else {
      items.push({ auth: claim.auth, message });
    }
  }
  return origin ? { items, batch: { payload, stream: origin.stream, relay: true } } : { items };
}

export const relayRoute: LinkRoute = gatewayLinkRoute('relay', RELAY_CREDIT, (ctx, edge) => ({
  message(msg, delivery, settle) {
    if ((delivery as { format?: number }).format !== BATCH_FORMAT) {
      settle(refuse(ctx, edge, CONDITION.decode, 'the relay link carries batches (format 0x80013700) only'));
      return;
    }
    let taken;
    try {
      taken = itemsOf(ctx, edge, msg as unknown as Buffer);
    } catch (err) {
      settle(err);
      return;
    }
    ctx.conn.shared.engine.sendTelemetryItems(taken.items, taken.batch).then(
      () => settle(),
      (err) => {
        const info = amqpErrorOf(err);
        refusals.warn(
          ctx.conn.log,
          sourceAddress(ctx.conn.remote),
          { who: describeIdentity(edge), condition: info.condition, reason: info.description },
          'relay batch refused',
        );
        settle(err);
      },
    );
  },
}));
