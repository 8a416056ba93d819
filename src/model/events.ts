import type { Message, ForwardedOrigin } from './message.ts';

/** The event stream: telemetry as the hub stores it, read by REST, the CLI and Event Hubs. */

/** Where a stored event sits in the stream and what the hub stamped on it. */
export interface StoredEventInfo {
  /** Global, gap-free-at-write, ever increasing (starts at 1). */
  sequenceNumber: number;
  /** Partition chosen by hash of the device id (stable for a device). */
  partition: number;
  /** Sequence number inside the partition (starts at 0, as in Event Hubs). */
  partitionSequenceNumber: number;
  /** Byte offset inside the partition (cumulative size of the events before it). */
  offset: number;
  /** `iothub-enqueuedtime`, epoch ms. */
  enqueuedTime: number;
}

/** A telemetry message as stored, with the hub's annotations. */
export interface StoredEvent extends StoredEventInfo {
  /** `iothub-connection-device-id`. */
  deviceId: string;
  /** `iothub-connection-module-id`, for module senders. */
  moduleId?: string;
  /** `iothub-connection-auth-method` (JSON text). */
  authMethod: string;
  /** `iothub-connection-auth-generation-id`. */
  authGenerationId?: string;
  /** `iothub-message-source`. */
  messageSource: 'Telemetry' | string;
  message: Message;
}

/** A message the engine is about to append (stamping is the store's job). */
export interface EventToAppend {
  deviceId: string;
  moduleId?: string;
  authMethod: string;
  authGenerationId?: string;
  messageSource: string;
  message: Message;
  /** Forwarded by a child gateway from its store: stored once (store/origin-watermarks.ts). */
  origin?: ForwardedOrigin;
}

/** Options for reading the event stream. Without a start, reading begins at the oldest event kept. */
export interface EventReadOptions {
  /** Start at this global sequence number (inclusive). */
  fromSequenceNumber?: number;
  /** Start at the first event enqueued at or after this time (epoch ms). */
  fromTime?: number;
  /** Only this device's events. */
  deviceId?: string;
  /** Only this module's events (with deviceId). */
  moduleId?: string;
  /** At most this many events (default 100, capped at 1000). */
  limit?: number;
  /** When nothing matches yet, wait up to this long for new events (long-poll). */
  waitMs?: number;
  /** Cancels a wait. */
  signal?: AbortSignal;
}

export interface EventReadResult {
  events: StoredEvent[];
  /** Pass as `fromSequenceNumber` to continue after what was returned (or after what was scanned). */
  nextSequenceNumber: number;
}

/** Reads by partition, for the Event Hubs compatible endpoint (issue 6). */
export interface PartitionReadOptions {
  partition: number;
  /** Start at this partition sequence number. */
  fromPartitionSequenceNumber?: number;
  /** Start at this byte offset. */
  fromOffset?: number;
  /** Start at this enqueued time (epoch ms). */
  fromTime?: number;
  /** Whether the start position itself is included (default true). */
  inclusive?: boolean;
  limit?: number;
  waitMs?: number;
  signal?: AbortSignal;
}

export interface PartitionInfo {
  partition: number;
  /** -1 when the partition holds nothing. */
  beginSequenceNumber: number;
  lastSequenceNumber: number;
  lastOffset: number;
  lastEnqueuedTime?: number;
  isEmpty: boolean;
}

/** The read side of the event stream, as the hub hands it to the service API, Event Hubs and the CLI. */
export interface EventStreamReader {
  read(opts?: EventReadOptions): Promise<EventReadResult>;
  readPartition(opts: PartitionReadOptions): Promise<StoredEvent[]>;
  partitionCount(): number;
  partitionInfo(partition: number): PartitionInfo;
  /** The next global sequence number that will be assigned. */
  nextSequenceNumber(): number;
  /** Called for each batch once durable; returns an unsubscribe function. */
  onAppend(listener: (events: StoredEvent[]) => void): () => void;
}
