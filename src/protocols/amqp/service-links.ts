import { randomUUID } from 'node:crypto';
import rhea, { type Delivery, type Receiver, type Sender } from 'rhea';
import type { C2DAck, C2DFeedbackRecord } from '../../model/c2d.ts';
import { feedbackJson } from '../feedback-json.ts';
import { parseC2DTarget, parseServiceAddress, type ServiceLinkKind } from './addresses.ts';
import type { PolicyClaim } from './claims.ts';
import { AmqpRefusal, amqpErrorOf, CONDITION } from './errors.ts';
import { CreditWindow, type LinkContext, type LinkHandler, type LinkRoute, type Outcome } from './links.ts';
import { fromAmqp } from './message.ts';

/**
 * What the service SDK (azure-iothub `Client`) attaches: a sender to `/messages/devicebound`
 * for C2D and a receiver on `/messages/serviceBound/feedback` for delivery feedback, both
 * authorized by a shared access policy token with ServiceConnect put on $cbs.
 */

export const FEEDBACK_CONTENT_TYPE = 'application/vnd.microsoft.iothub.feedback.json';
const C2D_CREDIT = 100;
const FEEDBACK_BATCH = 100;
const ACKS: readonly C2DAck[] = ['none', 'positive', 'negative', 'full'];

function serviceRoute(
  name: string,
  role: 'sender' | 'receiver',
  kind: ServiceLinkKind,
  open: (ctx: LinkContext) => LinkHandler,
): LinkRoute {
  return {
    name,
    role,
    match: (_path, address) => (parseServiceAddress(address) === kind ? kind : undefined),
    open: (ctx) => {
      requireServiceConnect(ctx);
      return open(ctx);
    },
  };
}

function serviceClaim(ctx: LinkContext): PolicyClaim | undefined {
  return ctx.conn.claims.policyWith(['ServiceConnect'], ctx.conn.shared.hostNames);
}

function requireServiceConnect(ctx: LinkContext): void {
  if (serviceClaim(ctx)) return;
  const held = ctx.conn.claims.allPolicies().map((p) => p.policy.keyName);
  throw new AmqpRefusal(
    CONDITION.unauthorized,
    held.length > 0
      ? `${ctx.address} needs a shared access policy with ServiceConnect; this connection holds ${held.join(', ')}`
      : `${ctx.address} needs a shared access policy token (ServiceConnect, audience ${ctx.conn.shared.hostNames[0]}) put on $cbs first`,
  );
}

// ---- C2D: the service sends, each message addressed by `to` ----

const c2dSend = serviceRoute('service c2d', 'receiver', 'c2d', (ctx) => {
  const credit = new CreditWindow(ctx.link as Receiver, C2D_CREDIT);
  credit.start();
  const { engine } = ctx.conn.shared;
  return {
    authorized: () => serviceClaim(ctx) !== undefined,
    message(msg, delivery) {
      credit.took();
      const refuse = (condition: string, description: string): void => {
        ctx.conn.log.warn({ to: msg.to, condition, reason: description }, 'cloud-to-device message refused');
        delivery.reject({ condition, description } as never);
        credit.done();
      };
      const deviceId = parseC2DTarget(msg.to);
      if (!deviceId) {
        refuse(
          CONDITION.argument,
          `"to" must be /devices/{deviceId}/messages/devicebound, got ${msg.to === undefined ? 'nothing' : JSON.stringify(msg.to)}`,
        );
        return;
      }
      const message = fromAmqp(msg);
      const ackRaw = message.properties['iothub-ack'];
      delete message.properties['iothub-ack'];
      const ack = (ackRaw ?? 'none').toLowerCase() as C2DAck;
      if (!ACKS.includes(ack)) {
        refuse(CONDITION.argument, `iothub-ack must be one of ${ACKS.join(', ')}, got "${ackRaw}"`);
        return;
      }
      engine.sendC2D(deviceId, message, { ack }).then(
        () => {
          delivery.accept();
          credit.done();
        },
        (err) => {
          const info = amqpErrorOf(err);
          refuse(info.condition, info.description);
        },
      );
    },
  };
});

// ---- feedback: the hub sends batches of records, the service settles them ----

class FeedbackLink implements LinkHandler {
  private readonly inflight = new Map<Delivery, number[]>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly ctx: LinkContext) {
    this.timer = setInterval(() => this.pump(), ctx.conn.shared.feedbackPollMs);
    this.timer.unref();
  }

  authorized = (): boolean => serviceClaim(this.ctx) !== undefined;

  sendable(): void {
    this.pump();
  }

  private pump(): void {
    const sender = this.ctx.link as Sender;
    const { engine, feedbackInFlight } = this.ctx.conn.shared;
    while (!this.ctx.closed && sender.is_open() && sender.sendable()) {
      let records: C2DFeedbackRecord[];
      try {
        records = engine
          .pendingFeedback(FEEDBACK_BATCH * 4)
          .filter((r) => !feedbackInFlight.has(r.id))
          .slice(0, FEEDBACK_BATCH);
      } catch (err) {
        this.ctx.conn.log.warn({ reason: amqpErrorOf(err).description }, 'reading feedback records failed');
        return;
      }
      if (records.length === 0) return;
      const ids = records.map((r) => r.id);
      for (const id of ids) feedbackInFlight.add(id);
      const delivery = sender.send({
        message_id: randomUUID(),
        content_type: FEEDBACK_CONTENT_TYPE,
        body: rhea.message.data_section(Buffer.from(JSON.stringify(records.map(feedbackJson)))),
      });
      if (delivery.settled) this.done(ids, true);
      else this.inflight.set(delivery, ids);
    }
  }

  outcome(delivery: Delivery, outcome: Outcome): void {
    const ids = this.inflight.get(delivery);
    if (!ids) return;
    this.inflight.delete(delivery);
    // Released: the service wants them again later. Accepted or rejected: they are gone.
    this.done(ids, outcome !== 'released');
  }

  private done(ids: number[], taken: boolean): void {
    const { engine, feedbackInFlight } = this.ctx.conn.shared;
    if (taken) {
      try {
        engine.acknowledgeFeedback(ids);
      } catch (err) {
        this.ctx.conn.log.warn({ reason: amqpErrorOf(err).description }, 'acknowledging feedback records failed');
      }
    }
    for (const id of ids) feedbackInFlight.delete(id);
  }

  closed(): void {
    clearInterval(this.timer);
    for (const ids of this.inflight.values()) this.done(ids, false);
    this.inflight.clear();
  }
}

const feedback = serviceRoute('service feedback', 'sender', 'feedback', (ctx) => new FeedbackLink(ctx));

const fileNotifications: LinkRoute = {
  name: 'file notifications',
  role: 'sender',
  match: (_path, address) => (parseServiceAddress(address) === 'file-notifications' ? true : undefined),
  open: (ctx) => {
    requireServiceConnect(ctx);
    throw new AmqpRefusal(CONDITION.notImplemented, 'file upload notifications are not supported by this hub');
  },
};

export const serviceRoutes: LinkRoute[] = [c2dSend, feedback, fileNotifications];
