import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Engine } from '../engine/engine.ts';
import type { C2DAck } from '../model/c2d.ts';
import type { EventReadOptions, EventStreamReader } from '../model/events.ts';
import type { IdentityRef } from '../model/identity.ts';
import type { Message } from '../model/message.ts';
import type { MethodInvokeRequest } from '../model/methods.ts';
import { authenticatePolicyToken, requireRight, type AccessPolicy } from '../identity/policies.ts';
import { asHubError } from '../protocols/http/device-api.ts';
import { feedbackJson } from '../protocols/feedback-json.ts';
import { emptyProperties, messageFromHeaders, parseExpiry } from '../protocols/http/message-headers.ts';
import { childLog } from '../util/log.ts';
import { mark, tracing } from '../util/latency-trace.ts';
import { JSON_MAX_DEPTH, nestsDeeperThan, tooDeepMessage } from '../util/json-depth.ts';
import { HubError, badRequest } from '../model/errors.ts';
import { eventJson, JsonBytes, writeEventJson, type EventPageJson } from './event-json.ts';
import { sendError } from '../protocols/http/rest-errors.ts';

/**
 * The service side of messaging, authenticated with shared access policy tokens that grant
 * ServiceConnect: direct method invocation (the path and JSON `azure-iothub`'s
 * `Client.invokeDeviceMethod` uses), sending cloud-to-device messages and reading their
 * feedback, and reading the event stream (JSON long-poll or server-sent events).
 */

export type MessagingEngine = Pick<Engine, 'invokeMethod' | 'sendC2D' | 'pendingFeedback' | 'acknowledgeFeedback'>;

export interface ServiceMessagingOptions {
  engine: MessagingEngine;
  /** The event stream's read side (GET /events). */
  events: EventStreamReader;
  /** Where policies come from and which host names tokens may name. */
  registry: { hostname: string; getPolicy(keyName: string): AccessPolicy | undefined };
  /** Further host names accepted as the token audience. */
  extraHostNames?: string[];
  log?: Logger;
  /** Largest C2D send body read (default 1 MiB; the engine enforces the message limit). */
  bodyLimit?: number;
  /** Registers shutdown work that must run before the engine closes (ending open event streams). */
  onClose?: (fn: () => void) => void;
}

// ---------------------------------------------------------------------------------------------
// The event stream as JSON: see event-json.ts

export type { EventJson, EventPageJson } from './event-json.ts';

// ---------------------------------------------------------------------------------------------
// Request parsing

/** Direct method timeouts (seconds); the engine raises a response timeout under IoT Hub's floor (5 s) to it. */
const MAX_TIMEOUT_S = 300;
const MAX_METHOD_NAME = 128;
const DEFAULT_EVENT_LIMIT = 100;
const MAX_EVENT_LIMIT = 1000;
/** Long-poll cap, below the usual 30 s client timeouts. */
const MAX_WAIT_S = 25;
const SSE_HEARTBEAT_MS = 15_000;
const ACKS: readonly C2DAck[] = ['none', 'positive', 'negative', 'full'];

function parseJsonBody(req: FastifyRequest, what: string): unknown {
  const raw = Buffer.isBuffer(req.body) ? req.body : undefined;
  if (!raw || raw.length === 0) throw badRequest(`the request has no body: send ${what}`);
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw badRequest(`the body is not valid JSON (${(err as Error).message}): send ${what}`);
  }
  // A payload goes on to a device serialised again, which deep nesting would overflow.
  if (nestsDeeperThan(value, JSON_MAX_DEPTH)) throw badRequest(tooDeepMessage('the request body', JSON_MAX_DEPTH));
  return value;
}

function timeoutField(body: Record<string, unknown>, name: string, min: number): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > MAX_TIMEOUT_S) {
    throw badRequest(`${name} must be a number of seconds from ${min} to ${MAX_TIMEOUT_S}, got ${JSON.stringify(v)}`);
  }
  return v;
}

export function parseMethodRequest(body: unknown): MethodInvokeRequest {
  const shape = '{"methodName": "...", "payload": ..., "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 0}';
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw badRequest(`the body must be ${shape}`);
  const b = body as Record<string, unknown>;
  if (typeof b.methodName !== 'string' || b.methodName.trim() === '')
    throw badRequest(`methodName is missing: send ${shape}`);
  if (b.methodName.length > MAX_METHOD_NAME)
    throw badRequest(`methodName is longer than ${MAX_METHOD_NAME} characters`);
  const request: MethodInvokeRequest = {
    methodName: b.methodName,
    payload: b.payload === undefined ? null : b.payload,
  };
  // The SDK turns 0 into its defaults; a literal 0 response timeout means "the default" here too.
  const response = b.responseTimeoutInSeconds === 0 ? undefined : timeoutField(b, 'responseTimeoutInSeconds', 1);
  const connect = timeoutField(b, 'connectTimeoutInSeconds', 0);
  if (response !== undefined) request.responseTimeoutInSeconds = response;
  if (connect !== undefined) request.connectTimeoutInSeconds = connect;
  return request;
}

function parseAck(value: unknown, where: string): C2DAck | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value === 'string' && (ACKS as readonly string[]).includes(value.toLowerCase()))
    return value.toLowerCase() as C2DAck;
  throw badRequest(`${where} must be one of ${ACKS.join(', ')}, got ${JSON.stringify(value)}`);
}

function parseTtl(value: unknown, where: string): number | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  const n = typeof value === 'string' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0)
    throw badRequest(`${where} must be a positive number of seconds, got ${JSON.stringify(value)}`);
  return Math.round(n * 1000);
}

const C2D_SHAPE =
  '{"body": "text" | {...} , "bodyBase64"?: "...", "properties"?: {"k": "v"}, "messageId"?, "correlationId"?, "userId"?, "contentType"?, "contentEncoding"?, "expiryTimeUtc"?, "ttlSeconds"?, "ack"?}';

interface C2DRequest {
  message: Message;
  ack?: C2DAck;
  ttlMs?: number;
}

/** The JSON envelope form of a C2D send. */
export function parseC2DEnvelope(body: unknown): C2DRequest {
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw badRequest(`the body must be ${C2D_SHAPE}`);
  const b = body as Record<string, unknown>;
  if (b.body !== undefined && b.bodyBase64 !== undefined)
    throw badRequest('give either "body" or "bodyBase64", not both');
  const message: Message = { body: Buffer.alloc(0), properties: emptyProperties() };
  if (typeof b.bodyBase64 === 'string') {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b.bodyBase64.replace(/\s+/g, '')))
      throw badRequest('"bodyBase64" is not base64');
    message.body = Buffer.from(b.bodyBase64, 'base64');
  } else if (b.bodyBase64 !== undefined) {
    throw badRequest('"bodyBase64" must be a string');
  } else if (typeof b.body === 'string') {
    message.body = Buffer.from(b.body, 'utf8');
  } else if (b.body !== undefined) {
    message.body = Buffer.from(JSON.stringify(b.body), 'utf8');
    message.contentType = 'application/json';
    message.contentEncoding = 'utf-8';
  }
  const text = (name: string): string | undefined => {
    const v = b[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') throw badRequest(`"${name}" must be a string`);
    return v;
  };
  for (const [field, name] of [
    ['messageId', 'messageId'],
    ['correlationId', 'correlationId'],
    ['userId', 'userId'],
    ['contentType', 'contentType'],
    ['contentEncoding', 'contentEncoding'],
  ] as const) {
    const v = text(name);
    if (v !== undefined) message[field] = v;
  }
  const expiry = b.expiryTimeUtc;
  if (expiry !== undefined && expiry !== null) {
    if (typeof expiry !== 'string' && typeof expiry !== 'number')
      throw badRequest('"expiryTimeUtc" must be an ISO 8601 time or epoch milliseconds');
    message.expiry = parseExpiry(String(expiry), '"expiryTimeUtc"');
  }
  if (b.properties !== undefined && b.properties !== null) {
    if (typeof b.properties !== 'object' || Array.isArray(b.properties))
      throw badRequest('"properties" must be an object of string values');
    for (const [k, v] of Object.entries(b.properties as Record<string, unknown>)) {
      if (!k) throw badRequest('a property name is empty');
      if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean')
        throw badRequest(`property "${k}" must be a string`);
      message.properties[k] = String(v);
    }
  }
  const request: C2DRequest = { message };
  const ack = parseAck(b.ack, '"ack"');
  const ttlMs = parseTtl(b.ttlSeconds, '"ttlSeconds"');
  if (ack !== undefined) request.ack = ack;
  if (ttlMs !== undefined) request.ttlMs = ttlMs;
  return request;
}

function single(v: unknown): string | undefined {
  if (Array.isArray(v)) return v.length ? String(v[0]) : undefined;
  return v === undefined ? undefined : String(v);
}

function wholeNumber(v: string, name: string, min: number, max: number): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw badRequest(`${name} must be a whole number from ${min} to ${max}, got "${v}"`);
  }
  return n;
}

interface EventQuery {
  read: EventReadOptions;
  /** `from=end`: start after the newest event. */
  fromEnd: boolean;
  waitMs: number;
}

export function parseEventQuery(query: Record<string, unknown>): EventQuery {
  const from = single(query.from);
  const since = single(query.since);
  const device = single(query.device);
  const module = single(query.module);
  const limit = single(query.limit);
  const wait = single(query.wait);
  if (from !== undefined && since !== undefined)
    throw badRequest('give either from (a sequence number) or since (a time), not both');
  const read: EventReadOptions = {};
  let fromEnd = false;
  if (from !== undefined) {
    if (/^(end|latest)$/i.test(from)) fromEnd = true;
    else read.fromSequenceNumber = wholeNumber(from, 'from', 0, Number.MAX_SAFE_INTEGER);
  }
  if (since !== undefined) read.fromTime = parseExpiry(since, 'since');
  if (device !== undefined) {
    if (!device) throw badRequest('device is empty');
    read.deviceId = device;
  }
  if (module !== undefined) {
    if (!module) throw badRequest('module is empty');
    if (device === undefined) throw badRequest('module needs device too');
    read.moduleId = module;
  }
  read.limit = limit === undefined ? DEFAULT_EVENT_LIMIT : wholeNumber(limit, 'limit', 1, MAX_EVENT_LIMIT);
  const waitS = wait === undefined ? 0 : Number(wait);
  if (!Number.isFinite(waitS) || waitS < 0 || waitS > MAX_WAIT_S)
    throw badRequest(`wait must be a number of seconds from 0 to ${MAX_WAIT_S}, got "${wait}"`);
  return { read, fromEnd, waitMs: Math.round(waitS * 1000) };
}

// ---------------------------------------------------------------------------------------------
// Feedback lock tokens: the ids handed out, so the caller completes exactly what it saw.

function feedbackLockToken(ids: number[]): string {
  return Buffer.from(ids.join(',')).toString('base64url');
}

function feedbackIds(token: string): number[] {
  const text = Buffer.from(token, 'base64url').toString('utf8');
  if (!/^\d+(,\d+)*$/.test(text))
    throw new HubError(
      412,
      'PreconditionFailed',
      `"${token}" is not a feedback lock token: use the ETag of GET /messages/serviceBound/feedback`,
    );
  return text.split(',').map(Number);
}

// ---------------------------------------------------------------------------------------------
// The plugin

type DeviceParams = { id: string };
type ModuleParams = { id: string; mid: string };

/** Registers the routes; use with `app.register(serviceMessaging, opts)` so its hooks stay its own. */
export async function serviceMessaging(app: FastifyInstance, opts: ServiceMessagingOptions): Promise<void> {
  const { engine, events, registry } = opts;
  const log = opts.log ?? childLog('service-messaging');
  const hostnames = [registry.hostname, ...(opts.extraHostNames ?? [])];
  /** Open event streams, ended when the hub closes so it need not wait for their clients. */
  const streams = new Set<AbortController>();

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: opts.bodyLimit ?? 1024 * 1024 }, (_req, body, done) =>
    done(null, body),
  );
  app.setErrorHandler((err, req, reply) => sendError(reply, req, log, asHubError(err)));

  app.addHook('onRequest', async (req) => {
    const { policy } = authenticatePolicyToken(req.headers.authorization, {
      hostnames,
      policy: (name) => registry.getPolicy(name),
      resourcePath: req.url.split('?')[0],
    });
    requireRight(policy, ['ServiceConnect'], "use devices' messaging (methods, cloud-to-device, events)");
  });

  const endStreams = () => {
    for (const c of streams) c.abort();
  };
  app.addHook('preClose', async () => endStreams());
  opts.onClose?.(endStreams);

  // Direct methods ------------------------------------------------------------------------------

  const invoke = async (req: FastifyRequest, target: IdentityRef) => {
    const request = parseMethodRequest(parseJsonBody(req, 'a method call as JSON'));
    const started = Date.now();
    const result = await engine.invokeMethod(target, request);
    log.debug(
      { ...target, method: request.methodName, status: result.status, ms: Date.now() - started },
      'direct method answered',
    );
    return { status: result.status, payload: result.payload === undefined ? null : result.payload };
  };
  app.post('/twins/:id/methods', (req) => invoke(req, { deviceId: (req.params as DeviceParams).id }));
  app.post('/twins/:id/modules/:mid/methods', (req) => {
    const { id, mid } = req.params as ModuleParams;
    return invoke(req, { deviceId: id, moduleId: mid });
  });

  // Cloud-to-device -----------------------------------------------------------------------------

  app.post('/devices/:id/messages/deviceBound', async (req) => {
    const deviceId = (req.params as DeviceParams).id;
    const query = req.query as Record<string, unknown>;
    const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    let request: C2DRequest;
    if (contentType === 'application/json') {
      request = parseC2DEnvelope(parseJsonBody(req, C2D_SHAPE));
    } else {
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      request = { message: messageFromHeaders(req.raw.rawHeaders, body) };
      // A raw body's own Content-Type describes it, unless iothub-contenttype says otherwise.
      if (request.message.contentType === undefined && contentType && contentType !== 'application/octet-stream') {
        request.message.contentType = req.headers['content-type']!.trim();
      }
      const ack = parseAck(single(req.headers['iothub-ack']), 'header iothub-ack');
      if (ack !== undefined) request.ack = ack;
    }
    const ack = parseAck(single(query.ack), 'ack');
    const ttlMs = parseTtl(single(query.ttlSeconds), 'ttlSeconds');
    if (ack !== undefined) request.ack = ack;
    if (ttlMs !== undefined) request.ttlMs = ttlMs;
    const sendOpts: { ack?: C2DAck; ttlMs?: number } = {};
    if (request.ack !== undefined) sendOpts.ack = request.ack;
    if (request.ttlMs !== undefined) sendOpts.ttlMs = request.ttlMs;
    const { messageId } = await engine.sendC2D(deviceId, request.message, sendOpts);
    log.debug({ deviceId, messageId, ack: request.ack }, 'C2D message queued');
    return { deviceId, messageId };
  });

  app.get('/messages/serviceBound/feedback', async (req, reply) => {
    const limit = single((req.query as Record<string, unknown>).limit);
    const records = engine.pendingFeedback(limit === undefined ? undefined : wholeNumber(limit, 'limit', 1, 1000));
    if (records.length === 0) return reply.code(204).send();
    reply.header('etag', `"${feedbackLockToken(records.map((r) => r.id))}"`);
    reply.header('content-type', 'application/vnd.microsoft.iothub.feedback.json; charset=utf-8');
    return reply.send(JSON.stringify(records.map(feedbackJson)));
  });

  app.delete('/messages/serviceBound/feedback/:lockToken', async (req, reply) => {
    const token = (req.params as { lockToken: string }).lockToken.replace(/^"|"$/g, '');
    engine.acknowledgeFeedback(feedbackIds(token));
    return reply.code(204).send();
  });

  // The event stream ----------------------------------------------------------------------------

  app.get('/events', async (req, reply) => {
    const q = parseEventQuery(req.query as Record<string, unknown>);
    const read: EventReadOptions = { ...q.read };
    if (q.fromEnd) read.fromSequenceNumber = events.nextSequenceNumber();
    const lastEventId = single(req.headers['last-event-id']);
    if (lastEventId !== undefined && /^\d+$/.test(lastEventId.trim())) {
      delete read.fromTime;
      read.fromSequenceNumber = Number(lastEventId) + 1;
    }
    const controller = new AbortController();
    // The response's close (not the request's, which fires once the request is read) says the client left.
    const onGone = () => controller.abort();
    reply.raw.on('close', onGone);
    streams.add(controller);
    try {
      if (wantsEventStream(req)) {
        await streamEvents(reply, read, controller.signal);
        return reply;
      }
      const page = await events.read({ ...read, waitMs: q.waitMs, signal: controller.signal });
      const json: EventPageJson = { events: page.events.map(eventJson), nextSequenceNumber: page.nextSequenceNumber };
      return json;
    } finally {
      streams.delete(controller);
      reply.raw.off('close', onGone);
    }
  });

  /** Server-sent events: one `data:` line of EventJson per message, `id:` the sequence number. */
  async function streamEvents(reply: FastifyReply, start: EventReadOptions, signal: AbortSignal): Promise<void> {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write(': strata event stream\n\n');
    const write = async (text: string | Buffer) => {
      if (!res.write(text) && !signal.aborted) {
        await new Promise<void>((resolve) => {
          const done = () => {
            res.off('drain', done);
            signal.removeEventListener('abort', done);
            resolve();
          };
          res.on('drain', done);
          signal.addEventListener('abort', done);
        });
      }
    };
    let read: EventReadOptions = { ...start, limit: MAX_EVENT_LIMIT };
    try {
      while (!signal.aborted) {
        let page;
        try {
          page = await events.read({ ...read, waitMs: SSE_HEARTBEAT_MS, signal });
        } catch (err) {
          if (signal.aborted) break;
          throw err;
        }
        // One write a page: a write and a wait per event would cost more than the event's JSON.
        if (page.events.length > 0) {
          const out = new JsonBytes(page.events.length * 1024);
          if (tracing) for (const e of page.events) mark('hub.sse', e.message.body);
          for (const e of page.events) {
            out.ascii(`id: ${e.sequenceNumber}\nevent: message\ndata: `);
            writeEventJson(out, e);
            out.ascii('\n\n');
          }
          await write(out.bytes());
        }
        if (page.events.length === 0 && !signal.aborted) await write(': keep-alive\n\n');
        read = { limit: MAX_EVENT_LIMIT, fromSequenceNumber: page.nextSequenceNumber };
        if (start.deviceId !== undefined) read.deviceId = start.deviceId;
        if (start.moduleId !== undefined) read.moduleId = start.moduleId;
      }
    } catch (err) {
      log.error({ err }, 'event stream failed');
      if (!res.writableEnded)
        res.write(
          `event: error\ndata: ${JSON.stringify({ message: 'the hub failed reading the event stream; see its log' })}\n\n`,
        );
    } finally {
      if (!res.writableEnded) res.end();
    }
  }
}

function wantsEventStream(req: FastifyRequest): boolean {
  const accept = req.headers.accept;
  return typeof accept === 'string' && accept.toLowerCase().includes('text/event-stream');
}
