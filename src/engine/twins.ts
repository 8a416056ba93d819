import { EngineError } from '../model/errors.ts';
import type { IdentityRef } from '../model/identity.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import { TWIN_MAX_DEPTH, nestsDeeperThan, tooDeepMessage } from '../util/json-depth.ts';
import { childLog } from '../util/log.ts';
import type { SessionImpl } from './session.ts';
import { describeIdentity } from '../model/identity.ts';
import type { EngineRegistry } from './types.ts';

const log = childLog('engine');

/** The twin as its device or module reads it: desired and reported, without metadata. */
export async function readTwin(registry: EngineRegistry, identity: IdentityRef): Promise<TwinProperties> {
  const twin = await registry.getTwin(identity.deviceId, identity.moduleId);
  if (!twin) throw new EngineError('not-found', `${describeIdentity(identity)} has no twin`);
  return {
    desired: withoutMetadata(twin.properties?.desired),
    reported: withoutMetadata(twin.properties?.reported),
  };
}

/** Merges a device's reported properties patch; resolves with the new reported `$version`. */
export async function patchReported(
  registry: EngineRegistry,
  identity: IdentityRef,
  patch: Record<string, unknown>,
): Promise<{ version: number }> {
  if (patch === null) {
    // IoT Hub refuses it too: a device clears its reported properties one by one.
    throw new EngineError(
      'bad-request',
      'a reported properties patch cannot be null; to remove reported properties, send a patch naming each of them as null',
    );
  }
  if (typeof patch !== 'object' || Array.isArray(patch)) {
    throw new EngineError('bad-request', 'a reported properties patch must be a JSON object');
  }
  for (const k of Object.keys(patch)) {
    if (k.startsWith('$'))
      throw new EngineError('bad-request', `reported property names cannot start with "$" ("${k}")`);
  }
  // Here, not only at the hub: a gateway would serialise the patch for its parent first.
  if (nestsDeeperThan(patch, TWIN_MAX_DEPTH))
    throw new EngineError('bad-request', tooDeepMessage('reported properties'));
  try {
    return await registry.updateReported(identity.deviceId, identity.moduleId, patch);
  } catch (err) {
    if (err instanceof EngineError) throw err;
    const status =
      (err as { status?: number; statusCode?: number }).status ?? (err as { statusCode?: number }).statusCode;
    if (status === 404) throw new EngineError('not-found', (err as Error).message);
    if (status === 400) throw new EngineError('bad-request', (err as Error).message);
    throw err;
  }
}

/** Hands a desired properties patch to a session; false when it has not subscribed to desired properties. */
export function pushDesired(s: SessionImpl | undefined, patch: TwinCollection): boolean {
  if (!s || s.closed || !s.subscriptions.has('desired') || !s.handler.onDesired) return false;
  try {
    s.handler.onDesired(patch);
  } catch (err) {
    log.error({ err, session: s.id }, 'desired push failed');
    return false;
  }
  return true;
}

function withoutMetadata(c: TwinCollection | undefined): TwinCollection {
  if (!c) return { $version: 1 };
  const out: TwinCollection = {};
  for (const [k, v] of Object.entries(c)) if (k !== '$metadata') out[k] = v;
  if (out.$version === undefined) out.$version = 1;
  return out;
}
