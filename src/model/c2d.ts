import type { Message } from './message.ts';

/** `iothub-ack`: which outcomes the sender wants feedback for. */
export type C2DAck = 'none' | 'positive' | 'negative' | 'full';

export type C2DOutcome = 'complete' | 'reject' | 'abandon';

/** A C2D message locked for one delivery. */
export interface C2DDelivery {
  /** Settle with this token. */
  lockToken: string;
  /** Number of times it has been delivered, this delivery included. */
  deliveryCount: number;
  enqueuedTime: number;
  /** Lock end, epoch ms. */
  lockedUntil: number;
  ack: C2DAck;
  message: Message;
}

export interface C2DSendOptions {
  ack?: C2DAck;
  /** Time to live in ms when the message carries no expiry (default: queue's default TTL, 1 hour). */
  ttlMs?: number;
}

/** A feedback record as IoT Hub reports it on `/messages/serviceBound/feedback`. */
export interface C2DFeedbackRecord {
  /** Feedback record id. */
  id: number;
  originalMessageId: string;
  deviceId: string;
  /** `Success` | `Expired` | `DeliveryCountExceeded` | `Rejected` | `Purged`. */
  statusCode: 'Success' | 'Expired' | 'DeliveryCountExceeded' | 'Rejected' | 'Purged';
  description: string;
  /** Epoch ms. */
  enqueuedTimeUtc: number;
  deviceGenerationId?: string;
}
