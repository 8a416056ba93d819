import type { AuthResult } from '../model/identity.ts';
import type { C2DQueue } from '../store/c2d-queue.ts';
import { describeIdentity } from '../model/identity.ts';
import type { SessionTable } from './sessions.ts';
import type { AuthorizeHook, EngineRegistry } from './types.ts';

/**
 * What the registry's identity changes do to live sessions: a deleted, disabled or re-keyed
 * identity loses its session, and a deleted one its queued C2D and kept session state.
 */
export async function recheckIdentity(
  deps: { registry: EngineRegistry; sessions: SessionTable; queue: C2DQueue | undefined },
  deviceId: string,
  moduleId: string | undefined,
  kind: string,
): Promise<void> {
  const { registry, sessions } = deps;
  const affected = sessions
    .all()
    .filter((s) => s.identity.deviceId === deviceId && (moduleId === undefined || s.identity.moduleId === moduleId));
  if (/delet/i.test(kind)) {
    if (moduleId === undefined) {
      const device = await registry.getDevice(deviceId);
      if (!device) {
        deps.queue?.purge(deviceId);
        sessions.forgetDevice(deviceId);
      }
    } else {
      sessions.forgetModule(deviceId, moduleId);
    }
  }
  for (const s of affected) {
    const device = await registry.getDevice(deviceId);
    const ident =
      s.identity.moduleId === undefined ? device : device && (await registry.getModule(deviceId, s.identity.moduleId));
    if (!device || !ident) s.end('identity-deleted', `${describeIdentity(s.identity)} was deleted`);
    else if (device.status === 'disabled' || ident.status === 'disabled')
      s.end('identity-disabled', `${describeIdentity(s.identity)} was disabled`);
    else if (authTypeChanged(s.auth, ident.authentication?.type))
      s.end('identity-changed', `the authentication of ${describeIdentity(s.identity)} changed`);
  }
}

/**
 * Runs the authorize hook again for every live session: a change to one identity (an edge
 * device disabled, moved or deleted) can take others out of scope.
 */
export async function reauthorizeAll(sessions: SessionTable, hook: AuthorizeHook | undefined): Promise<void> {
  if (!hook) return;
  for (const s of sessions.all()) {
    if (s.closed) continue;
    const refusal = await hook(s.identity, { live: true });
    if (refusal !== undefined) s.end('forbidden', refusal);
  }
}

function authTypeChanged(auth: AuthResult, type: string | undefined): boolean {
  const t = type ?? 'sas';
  if (auth.kind === 'sas') return t !== 'sas';
  if (auth.kind === 'x509-thumbprint') return t !== 'selfSigned';
  return t !== 'certificateAuthority';
}
