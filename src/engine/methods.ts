import { EngineError } from '../model/errors.ts';
import { identityKey, type IdentityRef } from '../model/identity.ts';
import type { MethodInvokeRequest, MethodInvokeResult } from '../model/methods.ts';
import { JSON_MAX_DEPTH, nestsDeeperThan, tooDeepMessage } from '../util/json-depth.ts';
import { childLog } from '../util/log.ts';
import type { SessionImpl } from './session.ts';
import { describeIdentity } from '../model/identity.ts';
import type { SessionTable } from './sessions.ts';

const log = childLog('engine');

interface PendingMethod {
  identity: IdentityRef;
  resolve: (r: MethodInvokeResult) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** Direct methods: a call from the service side waits for the device's answer on its session. */
export class MethodCalls {
  private readonly pending = new Map<string, PendingMethod>();
  private readonly connectWaiters = new Map<string, Set<() => void>>();
  private nextRequestId = 1;

  constructor(private readonly sessions: SessionTable) {}

  /** Service side: calls a method on a connected device/module. not-connected -> 404, timeout -> 504. */
  async invoke(target: IdentityRef, request: MethodInvokeRequest): Promise<MethodInvokeResult> {
    if (
      typeof request.methodName !== 'string' ||
      request.methodName.length === 0 ||
      /[/#+?]/.test(request.methodName)
    ) {
      throw new EngineError('bad-request', `invalid method name "${String(request.methodName)}"`);
    }
    const responseTimeout = secondsOr(request.responseTimeoutInSeconds, 30, 5, 300);
    const connectTimeout = secondsOr(request.connectTimeoutInSeconds, 0, 0, 300);
    const key = identityKey(target);
    let session = this.methodTarget(key);
    if (!session && connectTimeout > 0) {
      await this.waitForConnect(key, connectTimeout * 1000);
      session = this.methodTarget(key);
    }
    if (!session) {
      throw new EngineError(
        'not-connected',
        `${describeIdentity(target)} is not connected or has not subscribed to direct methods`,
      );
    }
    const requestId = (this.nextRequestId++).toString(16);
    const payload = Buffer.from(JSON.stringify(request.payload === undefined ? null : request.payload));
    const target2 = session;
    return new Promise<MethodInvokeResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(
          new EngineError(
            'timeout',
            `${describeIdentity(target)} did not answer method "${request.methodName}" within ${responseTimeout} s`,
          ),
        );
      }, responseTimeout * 1000);
      this.pending.set(requestId, { identity: target, resolve, reject, timer });
      try {
        target2.handler.onMethod?.({ requestId, methodName: request.methodName, payload });
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(requestId);
        reject(err as Error);
      }
    });
  }

  /** The device's answer to a method request. */
  response(session: SessionImpl, requestId: string, status: number, payload: Buffer): void {
    const p = this.pending.get(requestId);
    if (!p || identityKey(p.identity) !== identityKey(session.identity)) {
      log.warn({ session: session.id, requestId }, 'method response for an unknown or expired request ignored');
      return;
    }
    this.pending.delete(requestId);
    clearTimeout(p.timer);
    let value: unknown = null;
    if (payload.length > 0) {
      const text = payload.toString('utf8');
      try {
        value = JSON.parse(text);
      } catch {
        value = text;
      }
    }
    // The caller serialises the answer again (to the service, or up to a parent gateway).
    if (nestsDeeperThan(value, JSON_MAX_DEPTH)) {
      log.warn({ session: session.id, requestId }, 'method response refused: its payload nests too deeply');
      p.reject(
        new EngineError(
          'bad-request',
          tooDeepMessage(`the method response of ${describeIdentity(session.identity)}`, JSON_MAX_DEPTH),
        ),
      );
      return;
    }
    p.resolve({ status, payload: value });
  }

  /** An identity subscribed to methods: calls waiting for it to connect go on. */
  notifyConnectWaiters(key: string): void {
    const set = this.connectWaiters.get(key);
    if (set) for (const w of [...set]) w();
  }

  /** The node stops: every call still waiting for an answer fails, each with an error of its own. */
  rejectAll(error: () => Error): void {
    for (const [rid, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(error());
      this.pending.delete(rid);
    }
  }

  private methodTarget(key: string): SessionImpl | undefined {
    const s = this.sessions.get(key);
    return s && !s.closed && s.subscriptions.has('methods') ? s : undefined;
  }

  private waitForConnect(key: string, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let set = this.connectWaiters.get(key);
      if (!set) this.connectWaiters.set(key, (set = new Set()));
      const done = (): void => {
        clearTimeout(timer);
        set!.delete(done);
        if (set!.size === 0) this.connectWaiters.delete(key);
        resolve();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
    });
  }
}

function secondsOr(v: unknown, dflt: number, min: number, max: number): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  if (!Number.isFinite(n)) return dflt;
  return Math.min(max, Math.max(min, n));
}
