import type { CloseReason, SessionHandler } from '../../engine/types.ts';
import type { C2DDelivery } from '../../model/c2d.ts';
import type { MethodRequest } from '../../model/methods.ts';
import type { TwinCollection } from '../../model/twin.ts';
import { c2dTopic, inputTopic } from './topics.ts';
import type { ClientConnection } from './types.ts';

/**
 * What the engine pushes to one connection, as PUBLISHes. A class rather than an object of arrow
 * functions: one small object per idle connection instead of five closures (each carrying a name
 * property once compiled).
 */
export class ConnectionSessionHandler implements SessionHandler {
  constructor(private readonly conn: ClientConnection) {}
  onC2D(d: C2DDelivery): void {
    const identity = this.conn.identity!;
    this.deliver(c2dTopic(identity.deviceId, d.message, d.ack), d);
  }
  onInput(input: string, d: C2DDelivery): void {
    const identity = this.conn.identity!;
    this.deliver(inputTopic(identity.deviceId, identity.moduleId ?? '', input, d.message, d.ack), d);
  }
  onDesired(patch: TwinCollection): void {
    const v = patch.$version;
    this.conn.publish(
      `$iothub/twin/PATCH/properties/desired/?$version=${v ?? ''}`,
      Buffer.from(JSON.stringify(patch)),
      0,
    );
  }
  onMethod(req: MethodRequest): void {
    this.conn.publish(
      `$iothub/methods/POST/${req.methodName}/?$rid=${encodeURIComponent(req.requestId)}`,
      req.payload,
      0,
    );
  }
  close(reason: CloseReason, detail?: string): void {
    this.conn.engineClose(reason, detail);
  }

  /** C2D messages and module inputs go out at QoS 1; their PUBACK completes them (handlers/puback.ts). */
  private deliver(topic: string, d: C2DDelivery): void {
    const conn = this.conn;
    if (conn.state !== 'connected') return;
    const id = conn.allocatePacketId();
    (conn.awaitingAck ??= new Map()).set(id, d.lockToken);
    conn.send({
      cmd: 'publish',
      topic,
      payload: d.message.body,
      qos: 1,
      dup: d.deliveryCount > 1,
      retain: false,
      messageId: id,
    });
  }
}
