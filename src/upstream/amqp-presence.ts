import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { SenderOptions } from 'rhea';
import { describeIdentity, identityKey, type IdentityRef } from '../model/identity.ts';
import { CONDITION } from '../protocols/amqp/errors.ts';
import { PRESENCE_CAPABILITY, presenceAddress, presenceAnnotations } from '../protocols/amqp/presence-link.ts';
import type { AmqpConnection } from './amqp-connection.ts';
import type { OutLink } from './amqp-links.ts';
import { FewAtATime } from './few-at-a-time.ts';

/**
 * Tells a Strata parent which identities below this gateway are connected, on its presence
 * link (protocols/amqp/presence-link.ts): the parent then counts them connected without a link
 * per identity. Each identity is authorized first (the CBS put-token on behalf of it, which its
 * telemetry needs anyway), then announced; one that leaves is withdrawn. After a reconnect every
 * identity still here is announced again, so the parent's connection states follow this
 * gateway's without a leaf having to send anything.
 */

/** Identities authorized and announced at once, at most: a storm of devices must not become a storm at the parent. */
const CONCURRENCY = 8;
/** How long after the parent detached the presence link it is attached again. */
const REATTACH_MS = 1000;
/** How long an identity that left is still shown present, in case it comes straight back. */
const ABSENT_AFTER_MS = 1000;

export interface PresenceOptions {
  edgeDeviceId: string;
  log: Logger;
  /** The CBS put-token on behalf of an identity, once per connection (amqp-target-auth.ts). */
  authorize(pc: AmqpConnection, identity: IdentityRef): Promise<void>;
  forgetAuthorization(pc: AmqpConnection, identity: IdentityRef): void;
  authChainOf(identity: IdentityRef): string;
}

interface OnConnection {
  pc: AmqpConnection;
  link?: Promise<OutLink>;
  /** Announced on this connection and not withdrawn. */
  announced: Set<string>;
  /** The parent refused the presence link on this connection. */
  refusal?: Error;
}

export class PresenceAnnouncer {
  private readonly present = new Map<string, IdentityRef>();
  private current?: OnConnection;
  /** Announcements a few at a time, so a storm of devices is no storm at the parent. */
  private readonly queue = new FewAtATime<string>(CONCURRENCY, (key) =>
    this.announce(key).catch((err: unknown) => this.o.log.warn({ err: String(err) }, 'announcing a device failed')),
  );
  /** Refusals logged, by identity key: one line per identity and connection. */
  private refusedLogged = new Set<string>();

  constructor(private readonly o: PresenceOptions) {}

  /** True when `pc`'s parent takes presence (then no per-identity link is needed to show it). */
  static usable(pc: AmqpConnection | undefined): boolean {
    return pc !== undefined && !pc.closed && pc.offers(PRESENCE_CAPABILITY);
  }

  /** An identity below connected (true) or left (false). */
  set(identity: IdentityRef, present: boolean): void {
    const key = identityKey(identity);
    if (present) {
      this.present.set(key, identity);
      this.enqueue(key);
      return;
    }
    if (!this.present.delete(key)) return;
    // A device that reconnects at once (a new session replacing its old one) must not flap at the parent.
    setTimeout(() => {
      const c = this.current;
      if (this.present.has(key) || !c?.link || !c.announced.delete(key)) return;
      void this.withdraw(c, c.link, identity);
    }, ABSENT_AFTER_MS).unref();
  }

  /** The link to the parent is up on `pc`: announce everyone present there (when it takes presence). */
  connected(pc: AmqpConnection): void {
    this.current = PresenceAnnouncer.usable(pc) ? { pc, announced: new Set() } : undefined;
    this.refusedLogged = new Set();
    this.queue.clear();
    if (this.current) for (const key of this.present.keys()) this.enqueue(key);
  }

  disconnected(pc: AmqpConnection): void {
    if (this.current?.pc === pc) this.current = undefined;
    this.queue.clear();
  }

  /** Identities present below, announced or not (for tests and status). */
  get size(): number {
    return this.present.size;
  }

  /** The identities present below, announced or not. */
  identities(): IterableIterator<IdentityRef> {
    return this.present.values();
  }

  private enqueue(key: string): void {
    if (!this.current) return;
    this.queue.push(key);
  }

  private async announce(key: string): Promise<void> {
    const c = this.current;
    const identity = this.present.get(key);
    if (!c || c.pc.closed || !identity || c.announced.has(key)) return;
    let link: OutLink;
    try {
      await this.o.authorize(c.pc, identity);
      link = await this.linkOf(c);
    } catch (err) {
      this.refused(key, identity, (err as Error).message);
      return;
    }
    // Checked again after the waits: the identity may have left, or the connection gone.
    if (this.current !== c || this.present.get(key) !== identity || c.announced.has(key)) return;
    c.announced.add(key);
    const outcome = await link.send({
      body: null,
      message_annotations: presenceAnnotations({ identity, present: true, authChain: this.o.authChainOf(identity) }),
    });
    if (outcome.ok || outcome.released) return;
    c.announced.delete(key);
    if (outcome.condition === CONDITION.unauthorized) this.o.forgetAuthorization(c.pc, identity);
    this.refused(key, identity, outcome.description);
  }

  private async withdraw(c: OnConnection, link: Promise<OutLink>, identity: IdentityRef): Promise<void> {
    try {
      const outcome = await (await link).send({
        body: null,
        message_annotations: presenceAnnotations({ identity, present: false }),
      });
      if (!outcome.ok && !outcome.released && !c.pc.closed)
        this.o.log.debug(
          { who: describeIdentity(identity), reason: outcome.description },
          'presence withdrawal refused',
        );
    } catch {
      // The link went with the connection: the parent let go of everyone on it.
    }
  }

  private refused(key: string, identity: IdentityRef, reason: string): void {
    if (this.refusedLogged.has(key)) return;
    if (this.refusedLogged.size < 10_000) this.refusedLogged.add(key);
    this.o.log.warn(
      { who: describeIdentity(identity), reason },
      'the parent does not show this identity connected: its presence was refused',
    );
  }

  private linkOf(c: OnConnection): Promise<OutLink> {
    if (c.link) return c.link;
    if (c.refusal) return Promise.reject(c.refusal);
    const link = c.pc.openSender(
      {
        name: `presence-${randomUUID()}`,
        target: { address: presenceAddress(this.o.edgeDeviceId) },
        source: { address: `presence-${this.o.edgeDeviceId}` },
        snd_settle_mode: 0,
        rcv_settle_mode: 0,
      } as SenderOptions,
      'presence',
    );
    c.link = link;
    link.then(
      (l) =>
        l.onGone(() => {
          // The parent let go of everyone the link announced: announce them again on a new one, a
          // moment later (a parent that keeps detaching must not be asked in a tight loop).
          if (c.link !== link) return;
          c.link = undefined;
          c.announced.clear();
          if (this.current !== c || c.pc.closed) return;
          setTimeout(() => {
            if (this.current === c) for (const key of this.present.keys()) this.enqueue(key);
          }, REATTACH_MS).unref();
        }),
      (err: unknown) => {
        // Refused: not asked again on this connection.
        if (c.link === link) c.link = undefined;
        c.refusal = err instanceof Error ? err : new Error(String(err));
      },
    );
    return link;
  }
}
