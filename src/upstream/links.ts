import type { Delivery, EventContext, Message as AmqpMessage, Receiver, Sender } from 'rhea';

/**
 * Client-side link plumbing for the upstream connection: attaching with a clear error when the
 * parent refuses, and a sender that never hands rhea a message without credit (rhea keeps one
 * outgoing queue per session, so a link without credit would stall every other link of it).
 */

/** A refusal or failure the parent reported, with its AMQP condition. */
export class UpstreamError extends Error {
  /** When set, the pump tries again after this long rather than backing off further (routing/pump.ts). */
  retryAfterMs?: number;
  /** The parent's own words for a refusal it answered, for a gateway to pass on unchanged. */
  parentMessage?: string;

  constructor(
    message: string,
    readonly condition?: string,
    /** IoT Hub's HTTP-like status, for CBS and twin answers. */
    readonly status?: number,
  ) {
    super(message);
    this.name = 'UpstreamError';
  }
}

/** A twin answer outside 2xx as an error carrying the parent's own text (its body is JSON with a message, or plain text). */
export function twinRefusal(operation: string, who: string, status: number, body: Buffer): UpstreamError {
  let text = body.toString('utf8');
  try {
    const parsed = JSON.parse(text) as { message?: string; Message?: string };
    text = parsed.message ?? parsed.Message ?? text;
  } catch {
    /* plain text */
  }
  const err = new UpstreamError(`twin ${operation} for ${who} refused by the parent (${status}): ${text}`, undefined, status);
  err.parentMessage = text;
  return err;
}

/** The link or connection this operation relied on went away; retry once the link is up. */
export class UpstreamDownError extends UpstreamError {
  constructor(message: string) {
    super(message, 'amqp:connection:forced');
    this.name = 'UpstreamDownError';
  }
}

type AnyLink = Sender | Receiver;

function linkError(link: AnyLink): { condition?: string; description?: string } | undefined {
  const remote = (link as unknown as { remote?: { detach?: { error?: { condition?: unknown; description?: unknown } } } }).remote;
  const e = remote?.detach?.error;
  if (!e) return undefined;
  return { condition: e.condition === undefined ? undefined : String(e.condition), description: e.description === undefined ? undefined : String(e.description) };
}

/** Resolves once the parent attached the link with a terminus; rejects with its reason when it refused. */
export function whenAttached<T extends AnyLink>(link: T, role: 'sender' | 'receiver', what: string, timeoutMs: number): Promise<T> {
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
      } else resolve(link);
    };
    const refused = () => {
      const e = linkError(link);
      return new UpstreamError(`the parent refused the ${what} link: ${e?.description ?? e?.condition ?? 'no reason given'}`, e?.condition ?? 'amqp:not-found');
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
    const timer = setTimeout(() => finish(new UpstreamError(`the parent did not answer the attach of the ${what} link within ${timeoutMs} ms`, 'com.microsoft:timeout')), timeoutMs);
    link.on(`${role}_open`, onOpen);
    link.on(`${role}_close`, onClose);
    link.on(`${role}_error`, onClose);
  });
}

export type SendOutcome = { ok: true } | { ok: false; condition: string; description: string; released?: boolean };

/** Refusals of a message that sending it again cannot cure. */
const PERMANENT_MESSAGE = new Set(['amqp:link:message-size-exceeded', 'amqp:decode-error', 'com.microsoft:argument-error', 'amqp:invalid-field']);

export function isPermanentForMessage(outcome: SendOutcome): boolean {
  return !outcome.ok && PERMANENT_MESSAGE.has(outcome.condition);
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

  constructor(readonly sender: Sender, readonly what: string) {
    sender.on('sendable', () => this.flush());
    sender.on('accepted', (ctx: EventContext) => this.settle(ctx.delivery!, { ok: true }));
    sender.on('rejected', (ctx: EventContext) => {
      const e = (ctx.delivery!.remote_state as { error?: { condition?: unknown; description?: unknown } } | undefined)?.error;
      this.settle(ctx.delivery!, { ok: false, condition: String(e?.condition ?? 'amqp:internal-error'), description: String(e?.description ?? 'rejected by the parent') });
    });
    sender.on('released', (ctx: EventContext) =>
      this.settle(ctx.delivery!, { ok: false, condition: 'released', description: 'the parent released the message (not taken; send it again)', released: true }),
    );
    const gone = () => {
      const e = linkError(sender);
      this.end(e?.description ? `the parent detached the ${what} link: ${e.description}` : `the ${what} link was detached`, e?.condition);
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
      const delivery = item.format === undefined ? this.sender.send(item.msg as AmqpMessage) : this.sender.send(item.msg as AmqpMessage, undefined, item.format);
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
