import { randomUUID } from 'node:crypto';
import rhea, { type Message as AmqpMessage } from 'rhea';
import type { C2DOutcome } from '../model/c2d.ts';
import { identityKey } from '../model/identity.ts';
import type { Message } from '../model/message.ts';
import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import { BATCH_FORMAT, type BatchOrigin } from '../protocols/amqp/batch.ts';
import { bodyBytes, idToAmqp, idToString } from '../protocols/amqp/message.ts';
import { sendInBatches } from './amqp-batches.ts';
import { AmqpIdentityLinks, detachAll, type TwinAnswer, type TwinLinks } from './amqp-identity-links.ts';
import { Backoff } from './backoff.ts';
import { UpstreamDownError, UpstreamError, twinRefusal, type SendOutcome } from './errors.ts';
import type { UpstreamC2DDelivery, UpstreamIdentity } from './parent-link.ts';
import type { TelemetrySender } from './telemetry-endpoint.ts';

/**
 * One downstream identity as the parent sees it through the gateway over AMQP: its telemetry,
 * twin, direct methods and C2D on the shared upstream connection, on links opened when first
 * used (amqp-identity-links.ts), each carrying the identity's auth chain. Callbacks registered
 * with onDesired / onMethod / onC2D keep their links attached: after a reconnect (or a link the
 * parent dropped) they are attached again.
 */
export class AmqpIdentityProxy extends AmqpIdentityLinks implements UpstreamIdentity, TelemetrySender {
  private readonly desiredLiveCbs: Array<() => void> = [];
  private rearmTimer?: NodeJS.Timeout;
  private backoff?: Backoff;
  /** Set once a callback is registered: a proxy that only sends telemetry has nothing to attach again. */
  private unsubscribeUp?: () => void;
  private lastArm: Promise<void> = Promise.resolve();

  private get rearmBackoff(): Backoff {
    this.backoff ??= new Backoff(1000, 30_000);
    return this.backoff;
  }

  // ---- telemetry (used by the telemetry endpoint) ----

  /** Sends messages in order on this identity's telemetry link, in batches (amqp-batches.ts); one outcome per message. */
  async forward(messages: readonly Message[], origin?: BatchOrigin): Promise<SendOutcome[]> {
    return this.sending(async () => sendInBatches(await this.telemetryLink(), messages, origin));
  }

  /** Attaches the telemetry link now; settles either way (a failure is left for the first send to report). */
  prepareTelemetry(): Promise<void> {
    try {
      return this.telemetryLink().then(
        () => undefined,
        () => undefined,
      );
    } catch {
      // The link to the parent went down meanwhile: the first send attaches.
      return Promise.resolve();
    }
  }

  /**
   * Sends a batch encoded already (a child gateway's, passed on as it came) on this identity's
   * telemetry link, and reports the parent's outcome. Rejects, having sent nothing, when the link
   * cannot be attached.
   */
  async sendBatchPayload(payload: Buffer): Promise<SendOutcome> {
    return this.sending(async () => (await this.telemetryLink()).sendEncoded(payload, BATCH_FORMAT));
  }

  private inFlight = 0;

  /** No telemetry send is under way: the proxy may be closed without failing one. */
  get idle(): boolean {
    return this.inFlight === 0;
  }

  private async sending<T>(send: () => Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await send();
    } finally {
      this.inFlight--;
    }
  }

  // ---- twin ----

  protected twinMessage(links: TwinLinks, msg: AmqpMessage): void {
    const cid = idToString(msg.correlation_id);
    const waiting = cid === undefined ? undefined : links.pending.get(cid);
    if (waiting) {
      links.pending.delete(cid!);
      clearTimeout(waiting.timer);
      const ann = (msg.message_annotations ?? {}) as Record<string, unknown>;
      const version = ann.version === undefined || ann.version === null ? undefined : Number(ann.version);
      waiting.resolve({
        status: Number(ann.status ?? 0),
        version: Number.isFinite(version) ? version : undefined,
        body: bodyBytes(msg.body),
      });
      return;
    }
    if (cid !== undefined) {
      // An answer to a request given up on (timed out): pushes carry no correlation id.
      this.owner.log.debug(
        { identity: identityKey(this.identity), correlationId: cid },
        'late twin answer from the parent; ignored',
      );
      return;
    }
    // Anything else on the twin link is a desired properties push.
    let patch: TwinCollection;
    try {
      patch = JSON.parse(bodyBytes(msg.body).toString('utf8')) as TwinCollection;
    } catch {
      this.owner.log.warn(
        { identity: identityKey(this.identity) },
        'desired properties push from the parent is not JSON; ignored',
      );
      return;
    }
    for (const cb of this.desiredCbs) {
      try {
        cb(patch);
      } catch (err) {
        this.owner.log.error({ err, identity: identityKey(this.identity) }, 'desired properties callback failed');
      }
    }
  }

  private twinRequest(links: TwinLinks, operation: string, resource?: string, body = ' '): Promise<TwinAnswer> {
    const cid = randomUUID();
    const annotations: Record<string, string> = { operation };
    if (resource) annotations.resource = resource;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        links.pending.delete(cid);
        reject(
          new UpstreamError(
            `the parent did not answer twin ${operation} for ${this.describe()} within ${this.owner.operationTimeoutMs} ms`,
            'com.microsoft:timeout',
            504,
          ),
        );
      }, this.owner.operationTimeoutMs);
      links.pending.set(cid, { resolve, reject, timer });
      links.out.post({
        correlation_id: cid,
        message_annotations: annotations,
        body: rhea.message.data_section(Buffer.from(body, 'utf8')),
      });
    });
  }

  private async twinCall(operation: string, resource?: string, body?: string): Promise<TwinAnswer> {
    const links = await this.twinLinks();
    const answer = await this.twinRequest(links, operation, resource, body);
    if (answer.status < 200 || answer.status >= 300) {
      throw twinRefusal(operation, this.describe(), answer.status, answer.body);
    }
    return answer;
  }

  async twinGet(): Promise<TwinProperties> {
    const answer = await this.twinCall('GET');
    const doc = JSON.parse(answer.body.toString('utf8') || '{}') as Partial<TwinProperties>;
    return { desired: doc.desired ?? { $version: 1 }, reported: doc.reported ?? { $version: 1 } };
  }

  async twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }> {
    const answer = await this.twinCall('PATCH', '/properties/reported', JSON.stringify(patch));
    return { version: answer.version ?? 0 };
  }

  private async subscribeDesired(links: TwinLinks): Promise<void> {
    if (links.subscribed) return;
    const answer = await this.twinRequest(links, 'PUT', '/notifications/twin/properties/desired');
    if (answer.status < 200 || answer.status >= 300) {
      throw new UpstreamError(
        `the parent refused desired property updates for ${this.describe()} (${answer.status}): ${answer.body.toString('utf8')}`,
        undefined,
        answer.status,
      );
    }
    links.subscribed = true;
    for (const live of this.desiredLiveCbs) {
      try {
        live();
      } catch (err) {
        this.owner.log.error({ err, identity: identityKey(this.identity) }, 'desired subscription callback failed');
      }
    }
  }

  onDesired(cb: (patch: TwinCollection) => void, onLive?: () => void): void {
    this.desiredCbs.push(cb);
    if (onLive) this.desiredLiveCbs.push(onLive);
    this.armSoon();
  }

  // ---- direct methods ----

  protected methodRequest(msg: AmqpMessage): void {
    const requestId = idToString(msg.correlation_id);
    const app = (msg.application_properties ?? {}) as Record<string, unknown>;
    const methodName = app['IoThub-methodname'] ?? app['iothub-methodname'];
    if (requestId === undefined || methodName === undefined) {
      this.owner.log.warn(
        { identity: identityKey(this.identity) },
        'method request from the parent without correlation id or method name; ignored',
      );
      return;
    }
    const req: MethodRequest = { requestId, methodName: String(methodName), payload: bodyBytes(msg.body) };
    if (!this.methodCb) {
      this.methodResponse(
        requestId,
        501,
        Buffer.from(JSON.stringify({ message: `${this.describe()} takes no direct methods here` })),
      );
      return;
    }
    try {
      this.methodCb(req);
    } catch (err) {
      this.owner.log.error({ err, identity: identityKey(this.identity) }, 'method callback failed');
    }
  }

  onMethod(cb: (req: MethodRequest) => void): void {
    this.methodCb = cb;
    this.armSoon();
  }

  methodResponse(requestId: string, status: number, payload: Buffer): void {
    const links = this.per?.pc === this.owner.current() ? this.per?.methodsReady : undefined;
    if (!links?.out.open) {
      this.owner.log.warn(
        { identity: identityKey(this.identity), requestId },
        'method response dropped: the method link to the parent is down (the caller times out)',
      );
      return;
    }
    links.out.post({
      correlation_id: idToAmqp(requestId),
      application_properties: { 'IoThub-status': rhea.types.wrap_int(status) },
      body: rhea.message.data_section(payload),
    });
  }

  // ---- cloud-to-device ----

  onC2D(cb: (delivery: UpstreamC2DDelivery) => void): void {
    this.c2dCb = cb;
    this.armSoon();
  }

  async settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void> {
    const per = this.per;
    const delivery = per?.pc === this.owner.current() ? per?.locks.get(lockToken) : undefined;
    if (!per || !delivery) {
      throw new UpstreamError(
        `no cloud-to-device delivery with lock token ${lockToken} for ${this.describe()} on the live link (the link was re-established since: the parent delivers the message again)`,
        'com.microsoft:message-lock-lost',
        412,
      );
    }
    per.locks.delete(lockToken);
    if (outcome === 'complete') delivery.accept();
    else if (outcome === 'reject') delivery.reject();
    else delivery.release();
  }

  // ---- keeping subscriptions attached ----

  private wanted(): boolean {
    return this.desiredCbs.length > 0 || this.methodCb !== undefined || this.c2dCb !== undefined;
  }

  /** Attaches every link a registered callback needs; rejects with the first refusal. */
  private async arm(): Promise<void> {
    const tasks: Array<Promise<unknown>> = [];
    if (this.desiredCbs.length > 0) tasks.push(this.twinLinks().then((l) => this.subscribeDesired(l)));
    if (this.methodCb) tasks.push(this.methodLinks());
    if (this.c2dCb) tasks.push(this.c2dLink());
    await Promise.all(tasks);
  }

  private armSoon(): void {
    if (this.isClosed) return;
    this.unsubscribeUp ??= this.owner.onUp(() => this.rearm());
    if (!this.owner.current()) return;
    this.rearm();
  }

  private rearm(): void {
    if (this.isClosed || !this.wanted()) return;
    if (this.rearmTimer) {
      clearTimeout(this.rearmTimer);
      this.rearmTimer = undefined;
    }
    const attempt = this.arm().then(
      () => this.rearmBackoff.reset(),
      (err: unknown) => {
        if (err instanceof UpstreamDownError || this.isClosed) throw err;
        this.owner.log.warn(
          { identity: identityKey(this.identity), err: (err as Error).message },
          'could not attach the links of a downstream identity upstream; will retry',
        );
        this.scheduleRearm();
        throw err;
      },
    );
    attempt.catch(() => {});
    this.lastArm = attempt;
  }

  protected scheduleRearm(): void {
    if (this.isClosed || this.rearmTimer) return;
    this.rearmTimer = setTimeout(() => {
      this.rearmTimer = undefined;
      if (this.owner.current()) this.rearm();
    }, this.rearmBackoff.next());
    this.rearmTimer.unref();
  }

  async ready(): Promise<void> {
    this.state();
    if (!this.wanted()) return;
    await this.lastArm.catch(() => undefined);
    await this.arm();
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    this.unsubscribeUp?.();
    if (this.rearmTimer) clearTimeout(this.rearmTimer);
    const per = this.per;
    this.per = undefined;
    if (!per) return;
    await detachAll(per);
  }
}
