import type { DeliveryEndpoint } from './pump.ts';

/**
 * An endpoint that reports every batch it took (`onSent`, after the send succeeded) and passes
 * everything else the pump asks of it straight through. Leaving out an optional member changes
 * the pump's behaviour silently: without `rewind` a gateway's origin chains broke after a
 * failure (the parent stored a resent message twice), without `maxInFlight` it sent one batch
 * at a time.
 */
export function countedEndpoint(ep: DeliveryEndpoint, onSent: (count: number) => void): DeliveryEndpoint {
  return {
    name: ep.name,
    maxBatch: ep.maxBatch,
    ...(ep.maxInFlight !== undefined ? { maxInFlight: ep.maxInFlight } : {}),
    send: async (batch) => {
      await ep.send(batch);
      onSent(batch.length);
    },
    ...(ep.isAvailable ? { isAvailable: () => ep.isAvailable!() } : {}),
    ...(ep.onAvailable ? { onAvailable: (l: () => void) => ep.onAvailable!(l) } : {}),
    ...(ep.rewind ? { rewind: () => ep.rewind!() } : {}),
  };
}
