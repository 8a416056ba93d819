import type { Engine } from '../../engine/engine.ts';
import type { CloseReason, Protocol, Session } from '../../engine/types.ts';
import type { ClientCertificate, IdentityRef } from '../../model/identity.ts';
import type { OnBehalfOfSource } from '../../identity/on-behalf-of.ts';

/** CONNACK return codes of MQTT 3.1.1. */
export const CONNACK = {
  accepted: 0,
  badProtocol: 1,
  identifierRejected: 2,
  unavailable: 3,
  badCredentials: 4,
  notAuthorized: 5,
} as const;

export type State = 'awaiting-connect' | 'authenticating' | 'connected' | 'closed';

export interface InternalPacket {
  cmd: string;
  messageId?: number;
  [k: string]: unknown;
}

/**
 * One connection as its packet handlers (handlers/) and the engine's pushes (session-handler.ts)
 * see it: the state they read and the answers they give. MqttConnection is the one implementation.
 */
export interface ClientConnection {
  readonly engine: Engine;
  readonly remote: string;
  readonly protocol: Extract<Protocol, 'mqtt' | 'mqtt-ws'>;
  readonly state: State;
  /** The identity CONNECT named; once connected, the session's. */
  identity?: IdentityRef;
  readonly session?: Session;
  /** The TLS client certificate, until CONNECT is handled. */
  readonly clientCertificate?: ClientCertificate;
  readonly onBehalfOfSource?: OnBehalfOfSource;
  /** Outgoing QoS 1 PUBLISHes waiting for PUBACK: packet id -> C2D lock token (made at the first). */
  awaitingAck?: Map<number, string>;
  /** Ends the registry watch of an on-behalf-of connection. */
  unwatch?: () => void;

  who(): string;
  /** CONNECT accepted and its session open: CONNACK, keep-alive, then the packets that waited. */
  established(session: Session, keepalive: number | undefined): void;
  /** Writes a packet; writes of the same event-loop turn leave in one TLS record. */
  send(packet: Record<string, unknown>): void;
  publish(topic: string, payload: Buffer, qos: 0 | 1): void;
  /** Acknowledges stored telemetry (batched per event-loop turn). */
  puback(messageId: number | undefined): void;
  allocatePacketId(): number;
  refuse(why: string, code?: number): void;
  protocolError(why: string): void;
  forbidden(why: string): void;
  /** The engine ends the session (replaced, token expired, identity disabled...). */
  engineClose(reason: CloseReason, detail?: string): void;
  teardown(reason: CloseReason, flush?: boolean): void;
}
