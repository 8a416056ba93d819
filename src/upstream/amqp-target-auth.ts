import type { Logger } from 'pino';
import { EDGE_HUB } from '../identity/device-id.ts';
import { identityKey, identityOfKey, type IdentityRef } from '../model/identity.ts';
import type { AmqpConnection } from './amqp-connection.ts';
import { UpstreamDownError, UpstreamError } from './errors.ts';

/**
 * Which downstream identities the gateway may act for on an AMQP connection. Before an
 * identity's first link, a CBS put-token names the identity's audience and carries the
 * gateway's own token; once per connection, renewed with the gateway's token. A refusal is kept
 * a few seconds, so links of a refused identity do not ask the parent again and again.
 */

const AUTH_RETRY_MS = 5000;

interface TargetAuth {
  promise: Promise<void>;
  /** When a refusal was cached (tried again after AUTH_RETRY_MS). */
  failedAt?: number;
}

export interface TargetAuthOptions {
  hubHostName: string;
  edgeDeviceId: string;
  log: Logger;
  /** The gateway's current SAS token. */
  gatewayToken(): string;
  /** Puts the gateway's token for itself; rejects when the parent refuses it. */
  putGatewayToken(pc: AmqpConnection): Promise<void>;
}

/** The CBS audience (`name`) of an identity: `{hub}/devices/{d}[/modules/{m}]`, ids URL-encoded as the SDKs do. */
export function audienceOf(hubHostName: string, id: IdentityRef): string {
  const d = encodeURIComponent(id.deviceId);
  return id.moduleId === undefined
    ? `${hubHostName}/devices/${d}`
    : `${hubHostName}/devices/${d}/modules/${encodeURIComponent(id.moduleId)}`;
}

export class TargetAuthorizations {
  private readonly targetAuth = new WeakMap<AmqpConnection, Map<string, TargetAuth>>();

  constructor(private readonly o: TargetAuthOptions) {}

  /** Puts the gateway's token for a downstream identity, once per connection (refusals are kept a few seconds). */
  authorize(pc: AmqpConnection, identity: IdentityRef): Promise<void> {
    if (identity.deviceId === this.o.edgeDeviceId && identity.moduleId === EDGE_HUB) return Promise.resolve();
    let map = this.targetAuth.get(pc);
    if (!map) {
      map = new Map();
      this.targetAuth.set(pc, map);
    }
    const key = identityKey(identity);
    const cached = map.get(key);
    if (cached && (cached.failedAt === undefined || Date.now() - cached.failedAt < AUTH_RETRY_MS))
      return cached.promise;
    const entry: TargetAuth = { promise: this.putTargetToken(pc, identity) };
    entry.promise.catch(() => {
      entry.failedAt = Date.now();
    });
    map.set(key, entry);
    return entry.promise;
  }

  /** Forgets that `identity` was authorized on `pc` (the parent refused a link of it): the next use puts the token again. */
  forget(pc: AmqpConnection, identity: IdentityRef): void {
    const map = this.targetAuth.get(pc);
    const entry = map?.get(identityKey(identity));
    if (entry && entry.failedAt === undefined) map!.delete(identityKey(identity));
  }

  /** Puts the gateway's token again for every identity authorized on `pc`; resolves with how many. */
  async renew(pc: AmqpConnection): Promise<number> {
    const map = this.targetAuth.get(pc);
    const renewals: Array<Promise<unknown>> = [];
    for (const [key, entry] of map ?? []) {
      if (entry.failedAt !== undefined) continue;
      const identity = identityOfKey(key);
      if (!identity) continue;
      renewals.push(
        pc.putToken(audienceOf(this.o.hubHostName, identity), this.o.gatewayToken()).catch(() => undefined),
      );
    }
    await Promise.all(renewals);
    return renewals.length;
  }

  private async putTargetToken(pc: AmqpConnection, identity: IdentityRef): Promise<void> {
    const r = await pc.putToken(audienceOf(this.o.hubHostName, identity), this.o.gatewayToken());
    if (r.status === 200) return;
    // Is it the target, or our own credential? Only the first is the target's fault.
    try {
      await this.o.putGatewayToken(pc);
    } catch (err) {
      const why = (err as Error).message;
      this.o.log.warn({ reason: why }, 'the parent no longer accepts the gateway credentials; reconnecting');
      pc.end(why);
      throw new UpstreamDownError(why);
    }
    const who =
      identity.moduleId === undefined
        ? `device ${identity.deviceId}`
        : `module ${identity.deviceId}/${identity.moduleId}`;
    throw new UpstreamError(
      `the parent refused to let ${this.o.edgeDeviceId} act for ${who} (${r.status}): ${r.description || 'no reason given'}`,
      r.status === 404 ? 'amqp:not-found' : 'amqp:unauthorized-access',
      r.status,
    );
  }
}
