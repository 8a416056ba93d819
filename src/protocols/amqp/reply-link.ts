import type { Message as AmqpMessage, Sender } from 'rhea';
import { SendQueue } from './links.ts';
import type { LinkContext, LinkHandler } from './types.ts';

/**
 * The answering half of a request/response node such as `$cbs` or `$management`: the client
 * attaches a receiver, and responses wait here until it gives credit.
 */
export class ReplyLink implements LinkHandler {
  readonly queue: SendQueue<AmqpMessage>;
  constructor(
    readonly ctx: LinkContext,
    readonly node: string,
  ) {
    this.queue = new SendQueue(ctx.link as Sender, (m) => void (ctx.link as Sender).send(m));
  }
  sendable(): void {
    this.queue.flush();
  }
  closed(): void {
    this.queue.drain();
  }
}

/**
 * Where to answer a request to `node`: the link named by reply_to (Event Hubs clients name their
 * receiver), else the newest on the same session (the device SDK says just `cbs`), else the
 * newest at all.
 */
export function replyLinkFor(ctx: LinkContext, node: string, replyTo: string | undefined): ReplyLink | undefined {
  let sameSession: ReplyLink | undefined;
  let any: ReplyLink | undefined;
  for (const { handler } of ctx.conn.handlers()) {
    if (!(handler instanceof ReplyLink) || handler.node !== node) continue;
    const target = (handler.ctx.link.target as { address?: string } | undefined)?.address;
    if (replyTo && (target === replyTo || handler.ctx.link.name === replyTo)) return handler;
    if (handler.ctx.link.session === ctx.link.session) sameSession = handler;
    any = handler;
  }
  return sameSession ?? any;
}
