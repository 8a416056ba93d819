import type mqtt from 'mqtt-packet';
import { describeIdentity } from '../../../model/identity.ts';
import { EngineError } from '../../../model/errors.ts';
import { childLog, wireText } from '../../../util/log.ts';
import { BagError, decodeBag, parsePublishTopic, sameIdentity } from '../topics.ts';
import type { ClientConnection } from '../types.ts';
import { twinError, twinResponse } from './twin-response.ts';

const log = childLog('mqtt');

/**
 * PUBLISH from the client: telemetry (the hot path: one engine call and its acknowledgement,
 * nothing else per message), twin requests and method responses.
 */
export function onPublish(conn: ClientConnection, p: mqtt.IPublishPacket): void {
  const session = conn.session!;
  if (p.qos === 2) return conn.protocolError(`QoS 2 PUBLISH to "${wireText(p.topic)}" is not supported`);
  const target = parsePublishTopic(p.topic);
  const payload = Buffer.isBuffer(p.payload) ? p.payload : Buffer.from(p.payload ?? '');
  switch (target.kind) {
    case 'telemetry': {
      if (!sameIdentity(target.identity, session.identity)) {
        return conn.forbidden(
          `published to ${describeIdentity(target.identity)}'s telemetry topic; nothing was stored`,
        );
      }
      let message;
      try {
        message = decodeBag(target.bag, payload);
      } catch (err) {
        if (err instanceof BagError)
          return conn.protocolError(`malformed property bag on "${wireText(p.topic)}": ${err.message}`);
        throw err;
      }
      const messageId = p.messageId;
      const qos = p.qos;
      session.sendTelemetry(message).then(
        () => {
          if (qos === 1) conn.puback(messageId);
        },
        (err: unknown) => {
          if (conn.state === 'closed') return;
          if (err instanceof EngineError && err.code === 'too-large') {
            log.warn({ who: conn.who(), remote: conn.remote }, `closing connection: ${err.message}`);
          } else if (err instanceof EngineError && err.code === 'store-full') {
            // MQTT 3.1.1 has no negative PUBACK: the close is the refusal; the device sends it again later.
            log.warn(
              { who: conn.who(), remote: conn.remote, code: err.code },
              `closing connection: telemetry not stored, ${err.message}`,
            );
          } else {
            log.warn({ err, who: conn.who() }, 'closing connection: telemetry could not be stored');
          }
          conn.teardown('protocol-error');
        },
      );
      return;
    }
    case 'twin-get':
      ackIfQos1(conn, p);
      session.twinGet().then(
        (twin) => twinResponse(conn, 200, target.rid, Buffer.from(JSON.stringify(twin))),
        (err: unknown) => twinError(conn, target.rid, err),
      );
      return;
    case 'twin-patch-reported': {
      ackIfQos1(conn, p);
      let patch: unknown;
      try {
        patch = JSON.parse(payload.toString('utf8'));
      } catch {
        return twinError(conn, target.rid, new EngineError('bad-request', 'the reported properties patch is not JSON'));
      }
      session.twinPatchReported(patch as Record<string, unknown>).then(
        ({ version }) => twinResponse(conn, 204, target.rid, Buffer.alloc(0), version),
        (err: unknown) => twinError(conn, target.rid, err),
      );
      return;
    }
    case 'method-response':
      ackIfQos1(conn, p);
      session.methodResponse(target.rid, target.status, payload);
      return;
    case 'unknown':
      return conn.protocolError(`PUBLISH to an unknown topic: ${wireText(target.why, 300)}`);
  }
}

function ackIfQos1(conn: ClientConnection, p: mqtt.IPublishPacket): void {
  if (p.qos === 1) conn.send({ cmd: 'puback', messageId: p.messageId });
}
