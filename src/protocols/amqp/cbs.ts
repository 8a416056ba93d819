import rhea, { type Message as AmqpMessage, type Receiver } from 'rhea';
import { isCbsAddress } from './addresses.ts';
import { claimFromToken, describeClaim } from './claims.ts';
import { amqpErrorOf, CONDITION } from './errors.ts';
import { CreditWindow } from './links.ts';
import { ReplyLink, replyLinkFor } from './reply-link.ts';
import { bodyBytes, echoId } from './message.ts';
import { onBehalfOfClaim } from './on-behalf-of.ts';
import type { LinkContext, LinkRoute } from './types.ts';
import { wireText } from '../../util/log.ts';

/**
 * Claims-based security: the client sends `put-token` requests on a sender link to `$cbs` and
 * reads the answers on a receiver link from `$cbs`. One connection may put tokens for many
 * identities (a gateway's children), and put a fresh one for the same identity to renew.
 */

const TOKEN_TYPES = new Set(['servicebus.windows.net:sastoken', 'azure-devices.net:sastoken']);
const CBS_CREDIT = 100;

function respond(ctx: LinkContext, request: AmqpMessage, status: number, description: string): void {
  const responder = replyLinkFor(ctx, 'cbs', request.reply_to ? String(request.reply_to) : undefined);
  if (!responder) {
    ctx.conn.log.warn('CBS request without a $cbs receiver link to answer on');
    return;
  }
  const response: AmqpMessage = {
    body: undefined,
    application_properties: { 'status-code': rhea.types.wrap_int(status), 'status-description': description },
  };
  if (request.message_id !== undefined) response.correlation_id = echoId(request.message_id) as string;
  if (request.reply_to) response.to = String(request.reply_to);
  responder.queue.push(response);
}

async function putToken(ctx: LinkContext, msg: AmqpMessage): Promise<void> {
  const app = (msg.application_properties ?? {}) as Record<string, unknown>;
  const operation = String(app.operation ?? '');
  const type = String(app.type ?? '');
  const audience = app.name === undefined ? undefined : String(app.name);
  if (operation !== 'put-token') {
    ctx.conn.refusal({ operation: wireText(operation) }, 'CBS request refused: unsupported operation');
    respond(ctx, msg, 400, `unsupported CBS operation "${wireText(operation)}": only put-token is supported`);
    return;
  }
  if (!TOKEN_TYPES.has(type)) {
    ctx.conn.refusal(
      { type: wireText(type), audience: audience === undefined ? undefined : wireText(audience) },
      'CBS put-token refused: unsupported token type',
    );
    respond(
      ctx,
      msg,
      400,
      `unsupported token type "${wireText(type)}": send a SharedAccessSignature with type servicebus.windows.net:sastoken`,
    );
    return;
  }
  const token = bodyBytes(msg.body).toString('utf8');
  try {
    const claim =
      (await onBehalfOfClaim(ctx.conn, audience, token)) ??
      (await claimFromToken(token, ctx.conn.shared.checker, 'cbs'));
    if (ctx.conn.closed) return;
    const { renewed } = ctx.conn.claims.put(claim);
    if (claim.kind === 'identity' && renewed) ctx.conn.devices.renewed(claim);
    ctx.conn.authenticated();
    ctx.conn.log.info(
      { who: describeClaim(claim), expiresAt: claim.expiresAt ? new Date(claim.expiresAt).toISOString() : undefined },
      renewed ? 'token renewed by CBS' : 'authenticated by CBS',
    );
    respond(ctx, msg, 200, 'OK');
  } catch (err) {
    const info = amqpErrorOf(err);
    // The SDKs read anything but 200 as unauthorized; 404 and 5xx still tell a person more.
    const status = info.condition === CONDITION.notFound ? 404 : info.condition === CONDITION.internal ? 500 : 401;
    ctx.conn.refusal(
      {
        audience: audience === undefined ? undefined : wireText(audience),
        status,
        reason: wireText(info.description, 300),
      },
      'CBS put-token refused',
    );
    respond(ctx, msg, status, info.description);
  }
}

const cbsRequests: LinkRoute = {
  name: 'cbs requests',
  role: 'receiver',
  anonymous: true,
  match: (_path, address) => (isCbsAddress(address) ? true : undefined),
  open: (ctx) => {
    const credit = new CreditWindow(ctx.link as Receiver, CBS_CREDIT);
    credit.start();
    return {
      message(msg, delivery) {
        credit.took();
        delivery.accept();
        putToken(ctx, msg)
          .catch((err) => ctx.conn.log.error({ err }, 'CBS request failed'))
          .finally(() => credit.done());
      },
    };
  },
};

const cbsResponses: LinkRoute = {
  name: 'cbs responses',
  role: 'sender',
  anonymous: true,
  match: (_path, address) => (isCbsAddress(address) ? true : undefined),
  open: (ctx) => new ReplyLink(ctx, 'cbs'),
};

export const cbsRoutes: LinkRoute[] = [cbsRequests, cbsResponses];
