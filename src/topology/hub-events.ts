import type { ServiceClient } from '../hub/service-client.ts';
import type { EventPageJson } from '../hub/service-messaging.ts';
import { childLog } from '../util/log.ts';

/**
 * Follows the hub's event stream (REST `GET /events`, long-polled) from the moment it starts,
 * counting what arrives per device: the proof, on the summary screen, that telemetry made it
 * through every layer.
 */

const log = childLog('topology-events');

export interface ArrivedEvent {
  deviceId: string;
  body: string;
  enqueuedTime: string;
}

export class HubEventFollower {
  total = 0;
  readonly byDevice = new Map<string, number>();
  /** Messages sent by modules, by `device/module`. */
  readonly byModule = new Map<string, number>();
  last?: ArrivedEvent;
  /** The last error reading the stream, cleared by the next good read. */
  error?: string;
  private stopped = false;
  private loop?: Promise<void>;

  constructor(
    private readonly client: ServiceClient,
    private readonly waitSeconds = 1,
  ) {}

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  private async run(): Promise<void> {
    let from = 'end';
    while (!this.stopped) {
      try {
        const page = (
          await this.client.request<EventPageJson>('GET', `/events?from=${from}&limit=1000&wait=${this.waitSeconds}`)
        ).body;
        for (const e of page.events) {
          this.total++;
          this.byDevice.set(e.deviceId, (this.byDevice.get(e.deviceId) ?? 0) + 1);
          if (e.moduleId) {
            const key = `${e.deviceId}/${e.moduleId}`;
            this.byModule.set(key, (this.byModule.get(key) ?? 0) + 1);
          }
          this.last = {
            deviceId: e.deviceId,
            body: Buffer.from(e.body, 'base64').toString('utf8'),
            enqueuedTime: e.enqueuedTime,
          };
        }
        from = String(page.nextSequenceNumber);
        this.error = undefined;
      } catch (err) {
        this.error = (err as Error).message;
        log.debug({ err: this.error }, 'reading the event stream failed');
        if (!this.stopped) await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
}
