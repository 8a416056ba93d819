import type { Engine } from '../engine/engine.ts';
import type { C2DOutcome } from '../model/c2d.ts';
import type { IdentityRef } from '../model/identity.ts';
import { Availability, type DeliveryEndpoint } from '../routing/pump.ts';
import type { QueuedMessage } from '../store/message-store.ts';
import { messageOfStored } from '../store/sender-message.ts';
import { childLog } from '../util/log.ts';

const log = childLog('module-endpoint');

/**
 * A route's `BrokeredEndpoint("/modules/{m}/inputs/{i}")`: delivers queued messages to the
 * input of a module of this gateway's device, on the module's live session (MQTT or AMQP), in
 * order. A batch succeeds once the module has settled every message: completed or rejected
 * (a rejected message is not offered again); an abandon, or the module going away, fails the
 * batch and the pump offers it again when the module is back.
 */
export class ModuleInputEndpoint implements DeliveryEndpoint {
  readonly name: string;
  readonly maxBatch = 50;
  /**
   * Batches handed to the module before the oldest is settled: with one, delivery stopped for a
   * round trip after every 50 messages and fell behind a module sending at full speed (about 1,000
   * msg/s and seconds of backlog in bench/modules.ts; 4 keeps up).
   */
  readonly maxInFlight = 4;
  readonly identity: IdentityRef;
  private readonly availability: Availability;

  constructor(
    private readonly engine: Pick<Engine, 'deliverInput' | 'isSubscribed'>,
    readonly edgeDeviceId: string,
    readonly moduleId: string,
    readonly input: string,
  ) {
    this.name = `/modules/${moduleId}/inputs/${input}`;
    this.identity = { deviceId: edgeDeviceId, moduleId };
    this.availability = new Availability(engine.isSubscribed(this.identity, 'inputs'));
  }

  isAvailable(): boolean {
    return this.engine.isSubscribed(this.identity, 'inputs');
  }

  onAvailable(listener: () => void): () => void {
    return this.availability.onAvailable(listener);
  }

  /** The module's inputs subscription changed (the gateway calls this from the engine's hook). */
  poke(): void {
    const up = this.isAvailable();
    // A session that ended never said so here: a new subscription is news even when the last word was "up",
    // else a pump that found the module gone waits for a change it is never told of.
    if (up) this.availability.set(false);
    this.availability.set(up);
  }

  async send(batch: readonly QueuedMessage[]): Promise<void> {
    const outcomes: Array<Promise<C2DOutcome>> = [];
    for (const q of batch) {
      let settle!: (o: C2DOutcome) => void;
      const done = new Promise<C2DOutcome>((resolve) => (settle = resolve));
      const handed = this.engine.deliverInput(
        this.identity,
        this.input,
        { message: messageOfStored(q.message), enqueuedTime: q.enqueuedAt },
        settle,
      );
      if (!handed) {
        // What was handed over already comes back as 'abandon' when the session ends.
        throw new Error(
          `module ${this.edgeDeviceId}/${this.moduleId} is not connected or has not subscribed to its inputs`,
        );
      }
      outcomes.push(done);
    }
    const results = await Promise.all(outcomes);
    const rejected = results.filter((r) => r === 'reject').length;
    if (rejected > 0)
      log.warn({ endpoint: this.name, rejected }, 'the module rejected messages; they are not offered again');
    if (results.some((r) => r === 'abandon'))
      throw new Error(`module ${this.edgeDeviceId}/${this.moduleId} abandoned messages on input ${this.input}`);
  }
}
