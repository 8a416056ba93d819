import type { TelemetryItem, TelemetrySink } from '../engine/types.ts';
import type { EventToAppend } from '../model/events.ts';
import { reserveBytesOf } from '../store/disk-headroom.ts';
import { EventStream } from '../store/event-stream.ts';
import { UserError } from '../util/errors.ts';

/**
 * The hub's event stream: where its telemetry goes (the engine's sink over it), read by the
 * service API, the Event Hubs endpoint and the CLI.
 */

/** STRATA_DISK_RESERVE_MB, when set: the event stream's free-space reserve. */
function envDiskReserve(): number | undefined {
  const raw = process.env.STRATA_DISK_RESERVE_MB;
  if (raw === undefined || raw.trim() === '') return undefined;
  try {
    return reserveBytesOf(raw, 'the environment variable STRATA_DISK_RESERVE_MB');
  } catch (err) {
    throw new UserError((err as Error).message, 'Set it to a number of MiB, e.g. 64 (the default)');
  }
}

/**
 * Opens the event stream in the hub's data directory. Retention comes from
 * STRATA_EVENT_RETENTION_MS when set (default 1 day), the disk reserve from the option, else
 * STRATA_DISK_RESERVE_MB.
 */
export function openEventStream(
  dataDir: string,
  opts: { partitions?: number; diskReserveBytes?: number } = {},
): EventStream {
  const envRetention = Number(process.env.STRATA_EVENT_RETENTION_MS);
  return new EventStream({
    dir: dataDir,
    partitions: opts.partitions,
    retentionMs: Number.isFinite(envRetention) && envRetention > 0 ? envRetention : undefined,
    diskReserveBytes: opts.diskReserveBytes ?? envDiskReserve(),
  });
}

/** The engine's sink at the hub: telemetry is appended to the event stream, stamped as IoT Hub stamps it. */
export function eventStreamSink(stream: EventStream): TelemetrySink {
  return {
    append: (items) => stream.appendAll(items.map(eventOf)),
    whenDurable: () => stream.whenDurable(),
    isForwardedStored: (origin) => stream.isForwardedStored(origin),
    forwardedInFlight: (origin) => stream.forwardedInFlight(origin),
    storeFull: () => stream.storeFull(),
  };
}

function eventOf(item: TelemetryItem): EventToAppend {
  const { auth, message, origin } = item;
  const event: EventToAppend = {
    deviceId: auth.identity.deviceId,
    moduleId: auth.identity.moduleId,
    authMethod: auth.authMethod,
    authGenerationId: auth.generationId,
    messageSource: 'Telemetry',
    message,
  };
  if (origin) event.origin = origin;
  return event;
}
