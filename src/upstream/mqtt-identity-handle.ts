import type { C2DOutcome } from '../model/c2d.ts';
import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import { identityKey } from '../model/identity.ts';
import { UpstreamDownError, UpstreamError } from './errors.ts';
import type { MqttIdentityProxy, ProxyCallbacks } from './mqtt-identity-proxy.ts';
import type { UpstreamC2DDelivery } from './parent-link.ts';

/**
 * What openIdentity returns over MQTT: the callbacks of one user of an identity proxy. Closing it
 * drops its callbacks (and the subscriptions they needed); the proxy's connection stays while
 * telemetry uses it, and the link closes it once idle.
 */
export class MqttIdentityHandle implements ProxyCallbacks {
  readonly deviceId: string;
  readonly moduleId?: string;
  readonly desiredCbs: Array<(patch: TwinCollection) => void> = [];
  readonly desiredLiveCbs: Array<() => void> = [];
  methodCb?: (req: MethodRequest) => void;
  c2dCb?: (delivery: UpstreamC2DDelivery) => void;
  private isClosed = false;

  constructor(
    private readonly proxy: MqttIdentityProxy,
    private readonly isUp: () => boolean,
  ) {
    this.deviceId = proxy.identity.deviceId;
    if (proxy.identity.moduleId !== undefined) this.moduleId = proxy.identity.moduleId;
  }

  get authChain(): string {
    return this.proxy.authChain;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  private open(): MqttIdentityProxy {
    if (this.isClosed) throw new UpstreamError(`the upstream identity ${identityKey(this.proxy.identity)} was closed`);
    return this.proxy;
  }

  twinGet(): Promise<TwinProperties> {
    return this.open().twinGet();
  }

  twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }> {
    return this.open().twinPatchReported(patch);
  }

  onDesired(cb: (patch: TwinCollection) => void, onLive?: () => void): void {
    this.desiredCbs.push(cb);
    if (onLive) this.desiredLiveCbs.push(onLive);
    this.armSoon();
  }

  onMethod(cb: (req: MethodRequest) => void): void {
    this.methodCb = cb;
    this.armSoon();
  }

  methodResponse(requestId: string, status: number, payload: Buffer): void {
    this.proxy.methodResponse(requestId, status, payload);
  }

  onC2D(cb: (delivery: UpstreamC2DDelivery) => void): void {
    this.c2dCb = cb;
    this.armSoon();
  }

  settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void> {
    return this.proxy.settleC2D(lockToken, outcome);
  }

  private armSoon(): void {
    if (!this.isClosed && this.isUp()) this.proxy.rearm();
  }

  async ready(): Promise<void> {
    const proxy = this.open();
    if (!this.isUp()) throw new UpstreamDownError(`the link to the parent is down; ${proxy.who} cannot reach it now`);
    await proxy.arm();
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    this.desiredCbs.length = 0;
    this.desiredLiveCbs.length = 0;
    this.methodCb = undefined;
    this.c2dCb = undefined;
    if (this.proxy.handle === this) this.proxy.handle = undefined;
    this.proxy.unsubscribeUnwanted();
  }
}
