import { AmqpRefusal, CONDITION } from '../errors.ts';

/**
 * Who reads a partition of a consumer group, with Event Hubs' owner-level (epoch) rules: a
 * receiver with an owner level takes the partition from every receiver with a lower or equal
 * one and from all receivers without one; while it holds the partition, receivers with a lower
 * level or none are refused. Receivers without an owner level share a partition, at most
 * `MAX_SHARED_READERS` at a time (Event Hubs' limit per partition and consumer group).
 */

export const MAX_SHARED_READERS = 5;

export interface PartitionReader {
  /** The link name, for descriptions. */
  readonly name: string;
  /** The owner level (`com.microsoft:epoch`), when the receiver has one. */
  readonly ownerLevel?: number;
  /** Detaches the reader because a newer owner took the partition. */
  displace(description: string): void;
}

export class PartitionOwnership {
  private readonly readers = new Map<string, Set<PartitionReader>>();

  /**
   * Registers a reader of `partition` in `consumerGroup`, displacing the ones it outranks.
   * Throws AmqpRefusal (amqp:link:stolen, or amqp:resource-limit-exceeded) when it may not read.
   * Returns the function that unregisters it.
   */
  claim(consumerGroup: string, partition: number, reader: PartitionReader): () => void {
    const key = `${consumerGroup.toLowerCase()}\n${partition}`;
    let set = this.readers.get(key);
    if (!set) this.readers.set(key, (set = new Set()));
    const where = `partition ${partition} of consumer group ${consumerGroup}`;
    let highest: PartitionReader | undefined;
    for (const r of set)
      if (r.ownerLevel !== undefined && (highest === undefined || r.ownerLevel > highest.ownerLevel!)) highest = r;

    if (reader.ownerLevel === undefined) {
      if (highest) {
        throw new AmqpRefusal(
          CONDITION.stolen,
          `receiver '${reader.name}' without an owner level cannot read ${where}: receiver '${highest.name}' owns it with owner level ${highest.ownerLevel}`,
        );
      }
      if (set.size >= MAX_SHARED_READERS) {
        throw new AmqpRefusal(
          CONDITION.resourceLimit,
          `at most ${MAX_SHARED_READERS} receivers may read ${where} at once; close one, or use another consumer group`,
        );
      }
    } else {
      if (highest && highest.ownerLevel! > reader.ownerLevel) {
        throw new AmqpRefusal(
          CONDITION.stolen,
          `receiver '${reader.name}' with owner level ${reader.ownerLevel} cannot read ${where}: receiver '${highest.name}' owns it with the higher owner level ${highest.ownerLevel}`,
        );
      }
      // In first, so that the displaced readers' release never finds the set empty.
      set.add(reader);
      for (const r of [...set]) {
        if (r === reader) continue;
        set.delete(r);
        r.displace(
          r.ownerLevel === undefined
            ? `receiver '${reader.name}' with owner level ${reader.ownerLevel} took ${where}; receivers without an owner level are disconnected`
            : `receiver '${reader.name}' with owner level ${reader.ownerLevel} took ${where} from this receiver (owner level ${r.ownerLevel})`,
        );
      }
    }
    set.add(reader);
    return () => {
      set.delete(reader);
      if (set.size === 0 && this.readers.get(key) === set) this.readers.delete(key);
    };
  }

  /** How many receivers read the partition now (for tests and logs). */
  count(consumerGroup: string, partition: number): number {
    return this.readers.get(`${consumerGroup.toLowerCase()}\n${partition}`)?.size ?? 0;
  }
}
