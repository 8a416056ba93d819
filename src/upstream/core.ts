import type { Logger } from 'pino';
import type { IdentityRef } from '../model/identity.ts';
import type { ParentConnection } from './parent-connection.ts';
import { identityKey } from '../model/identity.ts';

/** What identity channels and the telemetry endpoint need from the UpstreamLink that owns them. */
export interface UpstreamCore {
  readonly hubHostName: string;
  readonly edgeDeviceId: string;
  readonly operationTimeoutMs: number;
  readonly log: Logger;
  /** The live connection, or undefined while the link is down. */
  current(): ParentConnection | undefined;
  /** Puts the gateway's token for `identity` on the connection (once per connection). */
  authorize(pc: ParentConnection, identity: IdentityRef): Promise<void>;
  /** Forgets that `identity` was authorized on `pc` (the parent refused a link of it): the next use puts the token again. */
  forgetAuthorization(pc: ParentConnection, identity: IdentityRef): void;
  /** Subscribes to the link coming up; returns the unsubscribe. */
  onUp(listener: () => void): () => void;
}

/** The link address path of an identity, e.g. `/devices/d1/modules/m1` (ids as they are, as the SDKs send them). */
export function basePath(id: IdentityRef): string {
  return id.moduleId === undefined ? `/devices/${id.deviceId}` : `/devices/${id.deviceId}/modules/${id.moduleId}`;
}

/** The CBS audience (`name`) of an identity: `{hub}/devices/{d}[/modules/{m}]`, ids URL-encoded as the SDKs do. */
export function audienceOf(hubHostName: string, id: IdentityRef): string {
  const d = encodeURIComponent(id.deviceId);
  return id.moduleId === undefined ? `${hubHostName}/devices/${d}` : `${hubHostName}/devices/${d}/modules/${encodeURIComponent(id.moduleId)}`;
}

/**
 * The auth chain of an identity nothing else names: a direct child of `edgeId` (`leaf;edge`,
 * `d/m;d;edge` for a module of one), or the edge device itself and its modules.
 */
export function directChildChain(id: IdentityRef, edgeId: string): string {
  if (id.deviceId === edgeId) return id.moduleId === undefined ? edgeId : `${edgeId}/${id.moduleId};${edgeId}`;
  return id.moduleId === undefined ? `${id.deviceId};${edgeId}` : `${id.deviceId}/${id.moduleId};${id.deviceId};${edgeId}`;
}
