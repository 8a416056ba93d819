import type { Delivery, Message as AmqpMessage, Receiver, Sender } from 'rhea';
import type { AmqpConnection } from './connection.ts';
import type { AmqpErrorInfo } from './errors.ts';

/**
 * The link dispatcher's vocabulary. Every link a client attaches is matched against an ordered
 * list of routes by our role on it and its address; the first route that matches takes it.
 * Device links, service links, CBS, and (issue 6) the Event Hubs receive side are all routes.
 */

/** Our role on a link: `sender` when the client receives. */
export type LinkRole = 'sender' | 'receiver';

/** How the client settled a delivery we sent. */
export type Outcome = 'accepted' | 'rejected' | 'released' | 'settled';

/** What a route sees of a link being attached. */
export interface LinkContext {
  readonly conn: AmqpConnection;
  readonly role: LinkRole;
  readonly link: Sender | Receiver;
  /** The address as the client wrote it (source for our senders, target for our receivers). */
  readonly address: string;
  /** The address reduced to its path (no scheme, host or query). */
  readonly path: string;
  /** The client's link properties (e.g. `com.microsoft:channel-correlation-id`). */
  readonly properties: Record<string, unknown>;
  /** True once the link is gone. */
  readonly closed: boolean;
  /** Detaches the link with an error (logged by the caller); `closed()` of its handler follows. */
  detach(error?: AmqpErrorInfo): void;
}

/** What a route installs for a link it took. Every member is optional. */
export interface LinkHandler {
  /** A message on our receiver. Settle through `delivery` (accept / reject / release). */
  message?(msg: AmqpMessage, delivery: Delivery): void;
  /** Our sender got credit (or room in the session window). */
  sendable?(): void;
  /** The client settled a delivery we sent on this link. */
  outcome?(delivery: Delivery, outcome: Outcome, error?: AmqpErrorInfo): void;
  /**
   * Asked when a claim of the connection lapsed or was dropped: false detaches the link with
   * amqp:unauthorized-access.
   */
  authorized?(): boolean;
  /** The link is gone: client detach, session end, connection loss, or our own detach. Called once. */
  closed?(): void;
}

export interface LinkRoute {
  /** For logs. */
  name: string;
  role: LinkRole;
  /** Open to clients that proved nothing yet (CBS, $management): attaching one does not count as authenticated. */
  anonymous?: boolean;
  /** Returns route parameters when the route takes this address; `path` is lower-cased nowhere. */
  match(path: string, address: string): unknown | undefined;
  /**
   * Takes the link. The attach reply is held until this returns (or its promise resolves), so
   * a route may adjust the terminus first (e.g. echo an Event Hubs filter with
   * `ctx.link.set_source`). Throw (AmqpRefusal, EngineError, AccessDenied) to refuse: the
   * client then gets an attach without a terminus and a detach with that error.
   */
  open(ctx: LinkContext, params: unknown): LinkHandler | Promise<LinkHandler>;
}

/**
 * Credit for one of our receivers: a fixed window, topped up as deliveries are settled, so a
 * client never has more than `window` messages waiting on the engine.
 */
export class CreditWindow {
  private pending = 0;
  constructor(private readonly receiver: Receiver, private readonly window: number) {}

  start(): void {
    this.receiver.add_credit(this.window);
  }

  /** A delivery arrived and is being worked on. */
  took(): void {
    this.pending++;
  }

  /** A delivery has been settled. */
  done(): void {
    this.pending = Math.max(0, this.pending - 1);
    const have = (this.receiver as unknown as { credit: number }).credit + this.pending;
    if (have <= this.window / 2 && !this.receiver.is_closed()) this.receiver.add_credit(this.window - have);
  }
}

/** A FIFO in front of one of our senders: rhea stalls a whole session on a link without credit, so we never send without it. */
export class SendQueue<T> {
  private readonly items: T[] = [];
  constructor(private readonly sender: Sender, private readonly send: (item: T) => void) {}

  get length(): number {
    return this.items.length;
  }

  push(item: T): void {
    this.items.push(item);
    this.flush();
  }

  flush(): void {
    while (this.items.length > 0 && this.sender.is_open() && this.sender.sendable()) this.send(this.items.shift()!);
  }

  /** Empties the queue (link gone), returning what was never sent. */
  drain(): T[] {
    return this.items.splice(0, this.items.length);
  }
}
