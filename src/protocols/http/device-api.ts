import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Engine } from '../../engine/engine.ts';
import { EngineError, httpStatusOf, iotHubErrorCodeOf, isEngineError } from '../../model/errors.ts';
import { MAX_MESSAGE_BYTES } from '../../model/message.ts';
import type { AuthResult, IdentityRef } from '../../model/identity.ts';
import type { C2DOutcome } from '../../model/c2d.ts';
import { HubError } from '../../model/errors.ts';
import { childLog } from '../../util/log.ts';
import { clientCertificateOf } from './client-cert.ts';
import {
  BATCH_CONTENT_TYPE,
  headerValueOk,
  messageFromHeaders,
  messageHeaders,
  messagesFromBatch,
} from './message-headers.ts';

/**
 * The device side of IoT Hub's HTTPS API (what `azure-iot-device-http` calls): telemetry,
 * single and batched, and cloud-to-device receive / complete / reject / abandon with locks.
 * Every request authenticates on its own (SAS header or TLS client certificate) through the
 * engine, which takes all decisions; this module only translates HTTP.
 */

export type DeviceApiEngine = Pick<
  Engine,
  'authenticate' | 'sendTelemetry' | 'sendTelemetryBatch' | 'receiveC2D' | 'settleC2D'
>;

/** Writes an error as the node's REST APIs all answer errors (IoT Hub's `{ Message: "ErrorCode:...;..." }`). */
export type ErrorReply = (reply: FastifyReply, req: FastifyRequest, log: Logger, err: unknown) => FastifyReply;

export interface DeviceApiOptions {
  engine: DeviceApiEngine;
  sendError: ErrorReply;
  log?: Logger;
  /**
   * Largest request body read at all. Above the message limit on purpose: a batch is base64
   * plus JSON, and the engine gives the precise "too large" answer.
   */
  bodyLimit?: number;
}

type DeviceParams = { id: string };
type ModuleParams = { id: string; mid: string };
type LockParams = { id: string; lockToken: string };

/** Registers the device HTTPS routes; use with `app.register(deviceApi, opts)` so its body parsing stays its own. */
export async function deviceApi(app: FastifyInstance, opts: DeviceApiOptions): Promise<void> {
  const { engine, sendError } = opts;
  const log = opts.log ?? childLog('http-device');
  const bodyLimit = opts.bodyLimit ?? 4 * MAX_MESSAGE_BYTES;

  // Telemetry bodies are opaque bytes whatever they claim to be (the SDK sends none or any type).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit }, (_req, body, done) => done(null, body));

  app.setErrorHandler((err, req, reply) => sendError(reply, req, log, asHubError(err)));

  const authenticate = (req: FastifyRequest, identity: IdentityRef): Promise<AuthResult> => {
    const header = req.headers.authorization;
    return engine.authenticate({
      ...identity,
      sasToken: typeof header === 'string' && header.trim() ? header.trim() : undefined,
      clientCertificate: clientCertificateOf(req.raw.socket),
    });
  };

  const telemetry = async (req: FastifyRequest, reply: FastifyReply, identity: IdentityRef) => {
    const auth = await authenticate(req, identity);
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    if (isBatch(req.headers['content-type'])) {
      const messages = messagesFromBatch(body);
      const stored = await engine.sendTelemetryBatch(auth, messages);
      log.debug({ ...identity, count: messages.length, first: stored[0]?.sequenceNumber }, 'telemetry batch stored');
    } else {
      const stored = await engine.sendTelemetry(auth, messageFromHeaders(req.raw.rawHeaders, body));
      log.debug({ ...identity, sequenceNumber: stored.sequenceNumber }, 'telemetry stored');
    }
    return reply.code(204).send();
  };

  app.post('/devices/:id/messages/events', (req, reply) =>
    telemetry(req, reply, { deviceId: (req.params as DeviceParams).id }),
  );
  app.post('/devices/:id/modules/:mid/messages/events', (req, reply) => {
    const { id, mid } = req.params as ModuleParams;
    return telemetry(req, reply, { deviceId: id, moduleId: mid });
  });

  app.get('/devices/:id/messages/devicebound', async (req, reply) => {
    const deviceId = (req.params as DeviceParams).id;
    await authenticate(req, { deviceId });
    const delivery = await engine.receiveC2D(deviceId);
    if (!delivery) return reply.code(204).send();
    const { headers, problems } = messageHeaders(delivery.message, { to: `/devices/${deviceId}/messages/devicebound` });
    for (const p of problems)
      log.warn({ deviceId, messageId: delivery.message.messageId, header: p.name }, `C2D message header: ${p.problem}`);
    const contentType = delivery.message.contentType;
    reply
      .code(200)
      .headers(headers)
      .header('etag', `"${delivery.lockToken}"`)
      .header('iothub-deliverycount', String(delivery.deliveryCount))
      .header('iothub-enqueuedtime', new Date(delivery.enqueuedTime).toISOString())
      .header('content-type', contentType && headerValueOk(contentType) ? contentType : 'application/octet-stream');
    if (delivery.ack !== 'none') reply.header('iothub-ack', delivery.ack);
    return reply.send(delivery.message.body);
  });

  const settle = async (req: FastifyRequest, reply: FastifyReply, outcome: C2DOutcome) => {
    const { id: deviceId, lockToken } = req.params as LockParams;
    await authenticate(req, { deviceId });
    try {
      await engine.settleC2D(deviceId, lockToken, outcome);
    } catch (err) {
      // The device exists (it just authenticated), so "not found" means the lock.
      if (isEngineError(err, 'not-found')) {
        throw new HubError(
          412,
          'DeviceMessageLockLost',
          `lock token ${lockToken} is unknown or its lock has expired: receive the message again`,
        );
      }
      throw err;
    }
    log.debug({ deviceId, lockToken, outcome }, 'C2D message settled');
    return reply.code(204).send();
  };

  app.delete('/devices/:id/messages/devicebound/:lockToken', (req, reply) =>
    settle(req, reply, 'reject' in (req.query as Record<string, unknown>) ? 'reject' : 'complete'),
  );
  app.post('/devices/:id/messages/devicebound/:lockToken/abandon', (req, reply) => settle(req, reply, 'abandon'));
}

function isBatch(contentType: string | undefined): boolean {
  return typeof contentType === 'string' && contentType.split(';')[0]!.trim().toLowerCase() === BATCH_CONTENT_TYPE;
}

/** Engine refusals carry their own code; the REST error writer speaks HubError. */
export function asHubError(err: unknown): unknown {
  if (err instanceof EngineError) return new HubError(httpStatusOf(err), iotHubErrorCodeOf(err), err.message);
  return err;
}
