import type { Receiver, Sender } from 'rhea';

// The link vocabulary lives in types.ts; re-exported for the routes that import it from here.
export type { LinkContext, LinkHandler, LinkRole, LinkRoute, Outcome } from './types.ts';

/**
 * Credit for one of our receivers: a fixed window, topped up as deliveries are settled, so a
 * client never has more than `window` messages waiting on the engine.
 */
export class CreditWindow {
  private pending = 0;
  constructor(
    private readonly receiver: Receiver,
    private readonly window: number,
  ) {}

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
  constructor(
    private readonly sender: Sender,
    private readonly send: (item: T) => void,
  ) {}

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
