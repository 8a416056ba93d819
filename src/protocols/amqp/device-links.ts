import rhea, { type Delivery, type Message as AmqpMessage, type Receiver, type Sender } from 'rhea';
import type { C2DDelivery, C2DOutcome } from '../../model/c2d.ts';
import type { ForwardedBatch } from '../../model/message.ts';
import type { MethodRequest } from '../../model/methods.ts';
import type { TwinCollection } from '../../model/twin.ts';
import { parseDeviceAddress, type DeviceAddress } from './addresses.ts';
import { describeIdentity } from '../../model/identity.ts';
import { identityKey } from '../../model/identity.ts';
import type { DeliveryTarget, DesiredTarget, IdentityState, Member, MethodTarget } from './device-sessions.ts';
import { BATCH_FORMAT, readOrigin } from './batch.ts';
import { decodeBatch } from './decode-message.ts';
import type { ForwardedOrigin } from '../../model/message.ts';
import { AmqpRefusal, amqpErrorOf, CONDITION, errorCodeOf, statusOf } from './errors.ts';
import { CreditWindow, SendQueue } from './links.ts';
import { bodyBytes, echoId, fromAmqp, idToAmqp, idToString, toAmqp } from './message.ts';
import { checkOnBehalfOfLink } from './on-behalf-of.ts';
import type { LinkContext, LinkHandler, LinkRoute, Outcome } from './types.ts';
import { refusals, sourceAddress, wireText } from '../../util/log.ts';

/**
 * The links a device or module SDK attaches: telemetry, C2D, module inputs, twin, direct
 * methods. Each is authorized for the identity its address names, then joins that identity's
 * engine session on this connection.
 */

const TELEMETRY_CREDIT = 100;
const REQUEST_CREDIT = 50;
const CHANNEL_ID = 'com.microsoft:channel-correlation-id';

function deviceRoute(
  name: string,
  role: 'sender' | 'receiver',
  kinds: Array<DeviceAddress['kind']>,
  open: (ctx: LinkContext, addr: DeviceAddress) => Promise<LinkHandler>,
): LinkRoute {
  return {
    name,
    role,
    match: (_path, address) => {
      const a = parseDeviceAddress(address);
      return a && kinds.includes(a.kind) ? a : undefined;
    },
    open: (ctx, params) => open(ctx, params as DeviceAddress),
  };
}

/** Joins the link to its identity and waits for the identity's session; refusals throw. */
async function join(ctx: LinkContext, addr: DeviceAddress): Promise<{ state: IdentityState; member: Member }> {
  checkOnBehalfOfLink(ctx, addr.identity);
  const state = ctx.conn.devices.stateFor(addr.identity);
  const member: Member = { detach: (error) => ctx.detach(error) };
  await state.enter(member);
  return { state, member };
}

/** Still authorized while the connection holds a live credential for the identity. */
/** When each sender last had a broken batch origin logged: at most one line every 10 s each. */
const badOriginLogged = new Map<string, number>();

function warnBadOrigin(ctx: LinkContext, identity: DeviceAddress['identity'], problem: string): void {
  const who = describeIdentity(identity);
  const now = Date.now();
  if (now - (badOriginLogged.get(who) ?? 0) < 10_000) return;
  if (badOriginLogged.size > 10_000) badOriginLogged.clear();
  badOriginLogged.set(who, now);
  ctx.conn.log.warn(
    { who, problem },
    'a batch names an origin that does not fit; its messages are stored without exactly-once (a resend of them would be stored again)',
  );
}

function authorizedFor(ctx: LinkContext, addr: DeviceAddress): () => boolean {
  return () => ctx.conn.claims.identity(addr.identity) !== undefined;
}

// ---- telemetry: the client sends on /devices/{d}[/modules/{m}]/messages/events ----

const telemetry = deviceRoute('telemetry', 'receiver', ['events'], async (ctx, addr) => {
  const { state, member } = await join(ctx, addr);
  const receiver = ctx.link as Receiver;
  const credit = new CreditWindow(receiver, TELEMETRY_CREDIT);
  credit.start();
  return {
    authorized: authorizedFor(ctx, addr),
    message(msg, delivery) {
      credit.took();
      const session = state.session;
      if (!session) {
        delivery.release({ delivery_failed: true } as never);
        credit.done();
        return;
      }
      let messages;
      let origins: ForwardedOrigin[] | undefined;
      let forwarded: ForwardedBatch | undefined;
      try {
        if ((delivery as { format?: number }).format === BATCH_FORMAT) {
          // A gateway sends many messages of one sender in one IoT Hub batch, naming where in its
          // store they come from so that each is stored once.
          const batch = decodeBatch(msg as unknown as Buffer);
          messages = batch.messages;
          const { origin, problem } = readOrigin(batch.annotations, messages.length);
          if (problem) warnBadOrigin(ctx, addr.identity, problem);
          if (origin) {
            const stream = `${identityKey(addr.identity)}|${origin.stream}`;
            origins = origin.seqs.map((seq, i) => ({ stream, seq, prev: i === 0 ? origin.prev : origin.seqs[i - 1]! }));
            forwarded = { payload: msg as unknown as Buffer, stream: origin.stream };
          }
        } else {
          messages = [fromAmqp(msg)];
        }
      } catch (err) {
        refusals.warn(
          ctx.conn.log,
          sourceAddress(ctx.conn.remote),
          { who: describeIdentity(addr.identity), reason: wireText((err as Error).message) },
          'unreadable telemetry refused',
        );
        delivery.reject({
          condition: CONDITION.decode,
          description: `unreadable message: ${(err as Error).message}`,
        } as never);
        credit.done();
        return;
      }
      session.touch();
      (messages.length === 1 && !origins
        ? session.sendTelemetry(messages[0]!)
        : session.sendTelemetryBatch(messages, origins, forwarded)
      ).then(
        () => {
          delivery.accept();
          credit.done();
        },
        (err) => {
          const info = amqpErrorOf(err);
          // One line per refused message would flood the log while a store is full: limited per client address.
          refusals.warn(
            ctx.conn.log,
            sourceAddress(ctx.conn.remote),
            { who: describeIdentity(addr.identity), condition: info.condition, reason: info.description },
            'telemetry refused',
          );
          delivery.reject(info as never);
          credit.done();
        },
      );
    },
    closed: () => state.leave(member),
  };
});

// ---- C2D and module inputs: the client receives ----

/** Sends locked deliveries to the client and turns its dispositions into settlements. */
class DeliveryLink implements DeliveryTarget, LinkHandler {
  private readonly queue: SendQueue<{ delivery: C2DDelivery; inputName?: string }>;
  private readonly inflight = new Map<Delivery, string>();

  constructor(
    private readonly ctx: LinkContext,
    private readonly state: IdentityState,
    private readonly member: Member,
    private readonly kind: 'c2d' | 'inputs',
  ) {
    this.queue = new SendQueue(ctx.link as Sender, (item) => this.send(item.delivery, item.inputName));
  }

  authorized = (): boolean => this.ctx.conn.claims.identity(this.state.identity) !== undefined;

  deliver(delivery: C2DDelivery, inputName?: string): void {
    this.queue.push({ delivery, inputName });
  }

  sendable(): void {
    this.queue.flush();
  }

  private send(d: C2DDelivery, inputName?: string): void {
    const msg = toAmqp(d.message, inputName !== undefined ? { 'x-opt-input-name': inputName } : undefined);
    const delivery = (this.ctx.link as Sender).send(msg);
    // A client that asked for pre-settled deliveries takes them as they come.
    if (delivery.settled) this.settle(d.lockToken, 'complete');
    else this.inflight.set(delivery, d.lockToken);
  }

  outcome(delivery: Delivery, outcome: Outcome): void {
    const lock = this.inflight.get(delivery);
    if (lock === undefined) return;
    this.inflight.delete(delivery);
    this.settle(lock, outcome === 'rejected' ? 'reject' : outcome === 'released' ? 'abandon' : 'complete');
  }

  private settle(lockToken: string, outcome: C2DOutcome): void {
    const session = this.state.session;
    if (!session) return;
    session.touch();
    session.settleC2D(lockToken, outcome).catch((err) => {
      this.ctx.conn.log.warn(
        { who: describeIdentity(this.state.identity), outcome, reason: amqpErrorOf(err).description },
        'settling a cloud-to-device message failed',
      );
    });
  }

  closed(): void {
    // Unsubscribe first: an abandon makes the engine deliver again, and this link is gone.
    this.state.removeTarget(this.kind, this);
    // Whatever the client did not settle goes back to the queue for the next receiver.
    for (const item of this.queue.drain()) this.settle(item.delivery.lockToken, 'abandon');
    for (const lock of this.inflight.values()) this.settle(lock, 'abandon');
    this.inflight.clear();
    this.state.leave(this.member);
  }
}

const c2d = deviceRoute('c2d', 'sender', ['devicebound', 'events'], async (ctx, addr) => {
  const kind = addr.kind === 'devicebound' ? 'c2d' : 'inputs';
  if (kind === 'inputs' && addr.identity.moduleId === undefined) {
    throw new AmqpRefusal(
      CONDITION.notFound,
      `a device receives cloud-to-device messages on /devices/${addr.identity.deviceId}/messages/devicebound; only modules receive on .../messages/events`,
    );
  }
  const { state, member } = await join(ctx, addr);
  const handler = new DeliveryLink(ctx, state, member, kind);
  state.addTarget(kind, handler);
  return handler;
});

// ---- direct methods: requests go out on our sender, responses come back on our receiver ----

class MethodLink implements MethodTarget, LinkHandler {
  private readonly queue: SendQueue<MethodRequest>;
  constructor(
    private readonly ctx: LinkContext,
    private readonly state: IdentityState,
    private readonly member: Member,
  ) {
    this.queue = new SendQueue(ctx.link as Sender, (req) => this.send(req));
  }

  authorized = (): boolean => this.ctx.conn.claims.identity(this.state.identity) !== undefined;

  request(req: MethodRequest): void {
    this.queue.push(req);
  }

  sendable(): void {
    this.queue.flush();
  }

  private send(req: MethodRequest): void {
    const wireId = idToAmqp(req.requestId);
    this.state.pendingMethods.set(req.requestId.toLowerCase(), req.requestId);
    (this.ctx.link as Sender).send({
      correlation_id: wireId,
      application_properties: { 'IoThub-methodname': req.methodName },
      body: rhea.message.data_section(req.payload),
    });
  }

  closed(): void {
    for (const req of this.queue.drain()) {
      this.state.session?.methodResponse(
        req.requestId,
        404,
        Buffer.from(JSON.stringify({ message: 'the device detached its method link' })),
      );
    }
    this.state.removeTarget('methods', this);
    this.state.leave(this.member);
  }
}

const methodRequests = deviceRoute('method requests', 'sender', ['methods'], async (ctx, addr) => {
  const { state, member } = await join(ctx, addr);
  const handler = new MethodLink(ctx, state, member);
  state.addTarget('methods', handler);
  return handler;
});

const methodResponses = deviceRoute('method responses', 'receiver', ['methods'], async (ctx, addr) => {
  const { state, member } = await join(ctx, addr);
  const receiver = ctx.link as Receiver;
  const credit = new CreditWindow(receiver, REQUEST_CREDIT);
  credit.start();
  return {
    authorized: authorizedFor(ctx, addr),
    message(msg, delivery) {
      credit.took();
      const wire = idToString(msg.correlation_id);
      const requestId = wire === undefined ? undefined : state.pendingMethods.get(wire.toLowerCase());
      const app = (msg.application_properties ?? {}) as Record<string, unknown>;
      const statusRaw = app['IoThub-status'] ?? app['iothub-status'];
      const status = typeof statusRaw === 'number' ? statusRaw : Number.parseInt(String(statusRaw ?? ''), 10);
      if (requestId === undefined || !Number.isInteger(status)) {
        const description =
          requestId === undefined
            ? `no method request with correlation id ${wire ?? '(none)'} is waiting`
            : 'method response without an integer IoThub-status';
        ctx.conn.log.warn({ who: describeIdentity(addr.identity), reason: description }, 'method response refused');
        delivery.reject({ condition: CONDITION.argument, description } as never);
        credit.done();
        return;
      }
      state.pendingMethods.delete(wire!.toLowerCase());
      state.session?.methodResponse(requestId, status, bodyBytes(msg.body));
      delivery.accept();
      credit.done();
    },
    closed: () => state.leave(member),
  };
});

// ---- twin: requests on our receiver, responses and desired pushes on our sender ----

class TwinSender implements DesiredTarget, LinkHandler {
  wantsDesired = false;
  readonly channel: string | undefined;
  private readonly queue: SendQueue<AmqpMessage>;
  constructor(
    readonly ctx: LinkContext,
    readonly state: IdentityState,
    private readonly member: Member,
  ) {
    this.channel = channelOf(ctx);
    this.queue = new SendQueue(ctx.link as Sender, (m) => void (ctx.link as Sender).send(m));
  }

  authorized = (): boolean => this.ctx.conn.claims.identity(this.state.identity) !== undefined;

  send(m: AmqpMessage): void {
    this.queue.push(m);
  }

  desired(patch: TwinCollection): void {
    this.queue.push({ body: rhea.message.data_section(Buffer.from(JSON.stringify(patch))) });
  }

  sendable(): void {
    this.queue.flush();
  }

  closed(): void {
    this.queue.drain();
    this.state.removeTarget('desired', this);
    this.state.leave(this.member);
  }
}

function channelOf(ctx: LinkContext): string | undefined {
  const v = ctx.properties[CHANNEL_ID];
  return v === undefined || v === null ? undefined : String(v);
}

/** The twin sender paired with a request link: same channel correlation id, else any of the identity's on this connection. */
function twinSenderFor(ctx: LinkContext, state: IdentityState): TwinSender | undefined {
  const channel = channelOf(ctx);
  let fallback: TwinSender | undefined;
  for (const { handler } of ctx.conn.handlers()) {
    if (!(handler instanceof TwinSender) || handler.state !== state) continue;
    if (channel !== undefined && handler.channel === channel) return handler;
    fallback ??= handler;
  }
  return fallback;
}

const twinSender = deviceRoute('twin responses', 'sender', ['twin'], async (ctx, addr) => {
  const { state, member } = await join(ctx, addr);
  const handler = new TwinSender(ctx, state, member);
  state.addTarget('desired', handler);
  return handler;
});

const twinRequests = deviceRoute('twin requests', 'receiver', ['twin'], async (ctx, addr) => {
  const { state, member } = await join(ctx, addr);
  const receiver = ctx.link as Receiver;
  const credit = new CreditWindow(receiver, REQUEST_CREDIT);
  credit.start();

  const respond = (request: AmqpMessage, status: number, body?: unknown, version?: number): void => {
    const out = twinSenderFor(ctx, state);
    if (!out) {
      ctx.conn.log.warn(
        { who: describeIdentity(addr.identity) },
        'twin request without a twin receiver link to answer on',
      );
      return;
    }
    const annotations: Record<string, unknown> = { status: rhea.types.wrap_int(status) };
    if (version !== undefined) annotations.version = rhea.types.wrap_long(version);
    const msg: AmqpMessage = { body: undefined, message_annotations: annotations };
    if (request.correlation_id !== undefined) msg.correlation_id = echoId(request.correlation_id) as string;
    if (body !== undefined) msg.body = rhea.message.data_section(Buffer.from(JSON.stringify(body)));
    out.send(msg);
  };

  const handle = async (msg: AmqpMessage): Promise<void> => {
    const ann = (msg.message_annotations ?? {}) as Record<string, unknown>;
    const operation = String(ann.operation ?? '').toUpperCase();
    const resource = String(ann.resource ?? '')
      .toLowerCase()
      .replace(/\/+$/, '');
    const session = await state.ready();
    session.touch();
    try {
      if (operation === 'GET') {
        const twin = await session.twinGet();
        respond(msg, 200, { desired: twin.desired, reported: twin.reported });
      } else if (operation === 'PATCH' && resource === '/properties/reported') {
        let patch: unknown;
        try {
          patch = JSON.parse(bodyBytes(msg.body).toString('utf8'));
        } catch {
          respond(msg, 400, { errorCode: 'ArgumentInvalid', message: 'the reported properties patch is not JSON' });
          return;
        }
        // null goes on to the engine, which says how to clear reported properties instead.
        if (patch !== null && (typeof patch !== 'object' || Array.isArray(patch))) {
          respond(msg, 400, {
            errorCode: 'ArgumentInvalid',
            message: 'the reported properties patch must be a JSON object',
          });
          return;
        }
        const { version } = await session.twinPatchReported(patch as Record<string, unknown>);
        respond(msg, 204, undefined, version);
      } else if (
        (operation === 'PUT' || operation === 'DELETE') &&
        resource === '/notifications/twin/properties/desired'
      ) {
        const out = twinSenderFor(ctx, state);
        if (operation === 'PUT') {
          if (out) out.wantsDesired = true;
          state.subscribeDesired();
        } else if (out) {
          out.wantsDesired = false;
        }
        respond(msg, 200);
      } else {
        respond(msg, 400, {
          errorCode: 'ArgumentInvalid',
          message: `unsupported twin operation "${operation}" on "${resource || '(no resource)'}"`,
        });
      }
    } catch (err) {
      ctx.conn.log.warn(
        { who: describeIdentity(addr.identity), operation, reason: amqpErrorOf(err).description },
        'twin request failed',
      );
      respond(msg, statusOf(err), { errorCode: errorCodeOf(err), message: amqpErrorOf(err).description });
    }
  };

  return {
    authorized: authorizedFor(ctx, addr),
    message(msg, delivery) {
      credit.took();
      // Also for pre-settled requests: rhea frees a session's incoming window only past locally
      // settled deliveries, so one left unsettled stalls every link of the session 2048 transfers later.
      delivery.accept();
      handle(msg)
        .catch((err) => ctx.conn.log.warn({ reason: amqpErrorOf(err).description }, 'twin request dropped'))
        .finally(() => credit.done());
    },
    closed: () => state.leave(member),
  };
});

/** Every device-side route, in matching order. */
export const deviceRoutes: LinkRoute[] = [telemetry, c2d, methodRequests, methodResponses, twinSender, twinRequests];
