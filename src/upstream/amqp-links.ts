import type { Delivery, EventContext, Message as AmqpMessage, Receiver, Sender } from 'rhea';
import { UpstreamError, type SendOutcome } from './errors.ts';

/**
 * Client-side link plumbing for the upstream connection: attaching with a clear error when the
 * parent refuses, and a sender that never hands rhea a message without credit (rhea keeps one
 * outgoing queue per session, so a link without credit would stall every other link of it).
 */

type AnyLink = Sender | Receiver;

function linkError(link: AnyLink): { condition?: string; description?: string } | undefined {
  const remote = (
    link as unknown as { remote?: { detach?: { error?: { condition?: unknown; description?: unknown } } } }
  ).remote;
  const e = remote?.detach?.error;
  if (!e) return undefined;
  return {
    condition: e.condition === undefined ? undefined : String(e.condition),
    description: e.description === undefined ? undefined : String(e.description),
  };
}

/** Resolves once the parent attached the link with a terminus; rejects with its reason when it refused. */
export function whenAttached<T extends AnyLink>(
  link: T,
  role: 'sender' | 'receiver',
  what: string,
  timeoutMs: number,
): Promise<T> {
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      link.removeListener(`${role}_open`, onOpen);
      link.removeListener(`${role}_close`, onClose);
      link.removeListener(`${role}_error`, onClose);
      if (err) {
        try {
          link.close();
        } catch {
          /* already gone */
        }
        reject(err);
      } else {
        // Once rhea's session has stored the parent's attach too (it does so after this event).
        queueMicrotask(() => releaseAttachFrames(link));
        resolve(link);
      }
    };
    const refused = () => {
      const e = linkError(link);
      return new UpstreamError(
        `the parent refused the ${what} link: ${e?.description ?? e?.condition ?? 'no reason given'}`,
        e?.condition ?? 'amqp:not-found',
      );
    };
    const onOpen = () => {
      const remote = (link as unknown as { remote: { attach?: { source?: unknown; target?: unknown } } }).remote.attach;
      const terminus = (role === 'sender' ? remote?.target : remote?.source) as { value?: unknown } | null | undefined;
      // A refused attach names no terminus (rhea hands it over as a typed null); its detach
      // with the reason follows at once.
      if (terminus === null || terminus === undefined || terminus.value === null || terminus.value === undefined) {
        if (linkError(link)) finish(refused());
        return;
      }
      finish();
    };
    const onClose = () => finish(refused());
    const timer = setTimeout(
      () =>
        finish(
          new UpstreamError(
            `the parent did not answer the attach of the ${what} link within ${timeoutMs} ms`,
            'com.microsoft:timeout',
          ),
        ),
      timeoutMs,
    );
    link.on(`${role}_open`, onOpen);
    link.on(`${role}_close`, onClose);
    link.on(`${role}_error`, onClose);
  });
}

/** The fields of an attach that rhea reads again once a link is open (its role and settle modes); the rest can go. */
interface AttachKept {
  role?: boolean;
  snd_settle_mode?: number;
  rcv_settle_mode?: number;
  max_message_size?: unknown;
}

/**
 * Lets go of the attach frames rhea keeps for an open link (both sides' performatives with their
 * termini and properties, and the options they were made from): several KB per link, and a
 * gateway keeps a telemetry link per connected leaf. rhea reads only the role and settle modes
 * again (and sends the attach again only on its own reconnect, which this connection never
 * uses); `max_message_size` stays readable.
 */
export function releaseAttachFrames(link: AnyLink): void {
  const l = link as unknown as {
    local: { attach: AttachKept };
    remote: { attach?: AttachKept };
    options: Record<string, unknown>;
  };
  const local = l.local.attach;
  l.local.attach = { role: local.role, snd_settle_mode: local.snd_settle_mode, rcv_settle_mode: local.rcv_settle_mode };
  const remote = l.remote.attach;
  if (remote)
    l.remote.attach = {
      role: remote.role,
      snd_settle_mode: remote.snd_settle_mode,
      rcv_settle_mode: remote.rcv_settle_mode,
      max_message_size: remote.max_message_size,
    };
  const { target: _t, source: _s, properties: _p, name: _n, ...options } = l.options;
  l.options = options;
}

interface Queued {
  /** A message for rhea to encode, or (with `format`) a payload already encoded. */
  msg: AmqpMessage | Buffer;
  format?: number;
  done?: (o: SendOutcome) => void;
}

/**
 * A sender with its own queue in front of rhea: messages go out only while the link has
 * credit. Messages sent unsettled report their outcome; when the link goes, everything not yet
 * settled fails with the reason.
 */
export class OutLink {
  private readonly queue: Queued[] = [];
  private readonly unsettled = new Map<Delivery, (o: SendOutcome) => void>();
  private endedWith: SendOutcome | undefined;
  private readonly goneListeners: Array<(why: string) => void> = [];

  constructor(
    readonly sender: Sender,
    readonly what: string,
  ) {
    sender.on('sendable', () => this.flush());
    sender.on('accepted', (ctx: EventContext) => this.settle(ctx.delivery!, { ok: true }));
    sender.on('rejected', (ctx: EventContext) => {
      const e = (ctx.delivery!.remote_state as { error?: { condition?: unknown; description?: unknown } } | undefined)
        ?.error;
      this.settle(ctx.delivery!, {
        ok: false,
        condition: String(e?.condition ?? 'amqp:internal-error'),
        description: String(e?.description ?? 'rejected by the parent'),
      });
    });
    sender.on('released', (ctx: EventContext) =>
      this.settle(ctx.delivery!, {
        ok: false,
        condition: 'released',
        description: 'the parent released the message (not taken; send it again)',
        released: true,
      }),
    );
    const gone = () => {
      const e = linkError(sender);
      this.end(
        e?.description ? `the parent detached the ${what} link: ${e.description}` : `the ${what} link was detached`,
        e?.condition,
      );
    };
    sender.on('sender_close', gone);
    sender.on('sender_error', gone);
  }

  get open(): boolean {
    return this.endedWith === undefined && this.sender.is_open();
  }

  /** Sends and reports the parent's outcome (for unsettled links). */
  send(msg: AmqpMessage): Promise<SendOutcome> {
    return new Promise((resolve) => this.enqueue({ msg, done: resolve }));
  }

  /** Sends an encoded payload with the given message format (0: one message; a batch format). */
  sendEncoded(payload: Buffer, format: number): Promise<SendOutcome> {
    return new Promise((resolve) => this.enqueue({ msg: payload, format, done: resolve }));
  }

  /** Sends without waiting for any outcome (pre-settled links, best-effort answers). */
  post(msg: AmqpMessage): void {
    this.enqueue({ msg });
  }

  private enqueue(item: Queued): void {
    if (this.endedWith) {
      item.done?.(this.endedWith);
      return;
    }
    this.queue.push(item);
    this.flush();
  }

  flush(): void {
    while (this.queue.length > 0 && !this.endedWith && this.sender.is_open() && this.sender.sendable()) {
      const item = this.queue.shift()!;
      const delivery =
        item.format === undefined
          ? this.sender.send(item.msg as AmqpMessage)
          : this.sender.send(item.msg as AmqpMessage, undefined, item.format);
      if (!item.done) continue;
      if (delivery.settled) item.done({ ok: true });
      else this.unsettled.set(delivery, item.done);
    }
  }

  private settle(delivery: Delivery, outcome: SendOutcome): void {
    const done = this.unsettled.get(delivery);
    if (!done) return;
    this.unsettled.delete(delivery);
    done(outcome);
  }

  onGone(listener: (why: string) => void): void {
    if (this.endedWith) listener(this.endedWith.ok ? '' : this.endedWith.description);
    else this.goneListeners.push(listener);
  }

  /** The link (or its connection) is gone: fail what is queued or unsettled. */
  end(why: string, condition = 'amqp:link:detach-forced'): void {
    if (this.endedWith) return;
    const outcome: SendOutcome = { ok: false, condition, description: why, released: true };
    this.endedWith = outcome;
    for (const item of this.queue.splice(0)) item.done?.(outcome);
    for (const [delivery, done] of this.unsettled) {
      forgetDelivery(delivery);
      done(outcome);
    }
    this.unsettled.clear();
    for (const l of this.goneListeners.splice(0)) l(why);
    try {
      if (!this.sender.is_closed()) this.sender.close();
    } catch {
      /* connection already gone */
    }
  }
}

/**
 * Marks a delivery of a link that is gone as settled on both sides. rhea frees a session's
 * delivery buffer strictly in order, and only past deliveries settled on both sides: one left
 * behind by a detached link would, 2048 deliveries later, stall every link of the session.
 */
export function forgetDelivery(delivery: Delivery): void {
  const d = delivery as unknown as { settled: boolean; remote_settled: boolean };
  d.settled = true;
  d.remote_settled = true;
}

/** Calls `fn` when the receiver is detached by the parent (with the reason, when one was given). */
export function onReceiverGone(receiver: Receiver, what: string, fn: (why: string) => void): void {
  let called = false;
  const gone = () => {
    if (called) return;
    called = true;
    const e = linkError(receiver);
    fn(e?.description ? `the parent detached the ${what} link: ${e.description}` : `the ${what} link was detached`);
  };
  receiver.on('receiver_close', gone);
  receiver.on('receiver_error', gone);
}

/** Closes a receiver unless it is closed already (or its connection is gone). */
export function closeQuietly(link: Receiver): void {
  try {
    if (!link.is_closed()) link.close();
  } catch {
    /* the connection is gone */
  }
}

/** Both attaches, or neither: when one fails the other is closed again. */
export async function both<A extends OutLink | Receiver, B extends OutLink | Receiver>(
  a: Promise<A>,
  b: Promise<B>,
): Promise<[A, B]> {
  const [ra, rb] = await Promise.allSettled([a, b]);
  if (ra.status === 'fulfilled' && rb.status === 'fulfilled') return [ra.value, rb.value];
  for (const r of [ra, rb]) {
    if (r.status !== 'fulfilled') continue;
    if (r.value instanceof OutLink) r.value.end('paired link refused');
    else closeQuietly(r.value as Receiver);
  }
  throw ra.status === 'rejected' ? ra.reason : (rb as PromiseRejectedResult).reason;
}
