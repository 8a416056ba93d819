import type { Delivery, EventContext, Receiver, Sender, Session as RheaSession } from 'rhea';
import { wireText } from '../../util/log.ts';
import { addressPath } from './addresses.ts';
import { amqpErrorOf, CONDITION } from './errors.ts';
import { LinkContextImpl, safe } from './link-context.ts';
import type { ClientConnection, LinkContext, LinkHandler, LinkRole, LinkRoute, Outcome } from './types.ts';

interface LinkEntry {
  ctx: LinkContextImpl;
  handler?: LinkHandler;
}

/**
 * The links of one connection: each attach matched to the route that takes it, then rhea's
 * link events (messages, credit, outcomes, detaches) passed to that route's handler.
 */
export class LinkTable {
  private readonly links = new Map<Sender | Receiver, LinkEntry>();

  constructor(private readonly conn: ClientConnection) {}

  /** The links attached now (for the connection's buffering check). */
  attached(): IterableIterator<Sender | Receiver> {
    return this.links.keys();
  }

  /** Links currently attached, for handlers that pair links (twin, methods, CBS). */
  handlers(): Array<{ ctx: LinkContext; handler?: LinkHandler }> {
    return [...this.links.values()];
  }

  /** Re-checks every link after a claim lapsed or was replaced; links that lost their authority are detached. */
  recheck(): void {
    for (const entry of [...this.links.values()]) {
      const ok = entry.handler?.authorized ? safe(() => entry.handler!.authorized!(), false) : true;
      if (!ok) {
        this.conn.log.info({ address: entry.ctx.address }, 'detaching link: its credential lapsed');
        entry.ctx.detach({
          condition: CONDITION.unauthorized,
          description: 'the token or certificate this link relied on has expired',
        });
      }
    }
  }

  opened(link: Sender | Receiver, role: LinkRole): void {
    const conn = this.conn;
    const remote = (role === 'sender' ? link.source : link.target) as { address?: string } | undefined;
    const address = remote?.address ? String(remote.address) : '';
    const path = addressPath(address);
    const attach = (
      link as unknown as {
        remote: {
          attach?: { properties?: Record<string, unknown>; snd_settle_mode?: number; rcv_settle_mode?: number };
        };
      }
    ).remote.attach;
    const properties = (attach?.properties ?? {}) as Record<string, unknown>;
    const ctx = new LinkContextImpl(conn, this, role, link, address, path, properties);
    const entry: LinkEntry = { ctx };
    this.links.set(link, entry);
    // rhea has queued its attach reply; hold it until the route has decided, so that a refused
    // link is answered with a null terminus and the error in one go.
    ctx.holdAttach();

    let route: LinkRoute | undefined;
    let params: unknown;
    for (const r of conn.shared.routes) {
      if (r.role !== role) continue;
      params = r.match(path, address);
      if (params !== undefined) {
        route = r;
        break;
      }
    }
    if (!route) {
      const description = address
        ? `no ${role === 'sender' ? 'source' : 'target'} node "${address}" on this hub`
        : `the link names no ${role === 'sender' ? 'source' : 'target'} address`;
      conn.refusal({ address: wireText(address), role }, `refused link: ${wireText(description, 300)}`);
      // A refused attach carries no terminus for the node the client asked for.
      ctx.detach({ condition: CONDITION.notFound, description });
      return;
    }

    // Echo the terminus and the settle modes the client asked for.
    const local = (link as unknown as { local: { attach: { snd_settle_mode?: number; rcv_settle_mode?: number } } })
      .local.attach;
    if (attach?.snd_settle_mode !== undefined) local.snd_settle_mode = attach.snd_settle_mode;
    if (attach?.rcv_settle_mode !== undefined) local.rcv_settle_mode = attach.rcv_settle_mode;
    if (role === 'sender') {
      link.set_source({ address });
      if (link.target) link.set_target(link.target as never);
    } else {
      link.set_target({ address });
      if (link.source) link.set_source(link.source as never);
    }

    const refuse = (err: unknown): void => {
      const info = amqpErrorOf(err);
      if (info.condition === CONDITION.internal) conn.log.error({ err, address }, 'link handler failed');
      conn.refusal(
        {
          address: wireText(address),
          route: route!.name,
          condition: info.condition,
          reason: wireText(info.description, 300),
        },
        'refused link',
      );
      ctx.detach(info);
    };
    let opened: LinkHandler | Promise<LinkHandler>;
    try {
      opened = route.open(ctx, params);
    } catch (err) {
      refuse(err);
      return;
    }
    const install = (handler: LinkHandler): void => {
      if (ctx.closed) {
        safe(() => handler.closed?.(), undefined);
        return;
      }
      entry.handler = handler;
      // A link that needs a credential was granted: whatever proved it (a claim, a certificate) holds.
      if (!route!.anonymous) conn.authenticated();
      ctx.sendAttach();
      conn.log.debug({ address, route: route!.name }, 'link attached');
      if (role === 'sender') safe(() => handler.sendable?.(), undefined);
    };
    if (opened instanceof Promise) opened.then(install, refuse);
    else install(opened);
  }

  message(ctx: EventContext): void {
    const receiver = ctx.receiver!;
    const delivery = ctx.delivery!;
    const entry = this.links.get(receiver);
    if (!entry?.handler?.message) {
      // Nothing takes it (link refused or still being authorized): the client sent without credit.
      delivery.release({ delivery_failed: true } as never);
      return;
    }
    entry.handler.message(ctx.message!, delivery);
  }

  sendable(sender: Sender): void {
    this.links.get(sender)?.handler?.sendable?.();
  }

  outcome(sender: Sender, delivery: Delivery, outcome: Outcome): void {
    const handler = this.links.get(sender)?.handler;
    if (!handler?.outcome) return;
    const state = delivery.remote_state as { error?: { condition?: string; description?: string } } | undefined;
    const error = state?.error?.condition
      ? { condition: String(state.error.condition), description: String(state.error.description ?? '') }
      : undefined;
    handler.outcome(delivery, outcome, error);
  }

  /** The client detached a link. */
  closedByClient(link: Sender | Receiver): void {
    const entry = this.links.get(link);
    if (!entry) return;
    const err = link.error as { condition?: string; description?: string } | undefined;
    if (err?.condition)
      this.conn.log.debug(
        { address: entry.ctx.address, condition: err.condition, description: err.description },
        'client detached a link with an error',
      );
    entry.ctx.gone();
  }

  sessionGone(session: RheaSession): void {
    for (const [link, entry] of [...this.links]) if (link.session === session) entry.ctx.gone();
  }

  /** The connection ended: every link is gone. */
  allGone(): void {
    for (const entry of [...this.links.values()]) entry.ctx.gone();
  }

  /** @internal a link context reports its link gone. */
  forget(link: Sender | Receiver): LinkEntry | undefined {
    const entry = this.links.get(link);
    this.links.delete(link);
    return entry;
  }
}
