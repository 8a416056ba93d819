import type { ForwardedOrigin } from '../../model/message.ts';
import { SenderMessage } from '../sender-message.ts';
import { log } from './log.ts';
import { type Endpoints, ignore, type PendingAppend } from './state.ts';
import { metaOf } from './stored-form.ts';
import type { AppendEntry, AppendTarget } from './types.ts';

/** An append's entries checked and made ready for the commit: nothing is queued yet. */

export interface PreparedAppends {
  /** The entries with targets, numbered when queued. */
  ready: PendingAppend[];
  /** Every origin named, in entry order (a child's stream is recorded in its order). */
  origins: ForwardedOrigin[];
  bytes: number;
}

/** The entries ready to queue, or why none of them may be (the first problem found). */
export function prepareAppends(
  entries: readonly AppendEntry[],
  now: number,
  endpoints: Endpoints,
): PreparedAppends | Error {
  const ready: PendingAppend[] = [];
  const origins: ForwardedOrigin[] = [];
  let bytes = 0;
  for (const entry of entries) {
    const problem = checkMessage(entry);
    if (problem) {
      log.warn({ problem }, 'append refused');
      return new TypeError(problem);
    }
    if (entry.origin) origins.push(entry.origin);
    // Nothing to store but the origin (if any): it is durable with the next commit.
    if (entry.targets.length === 0) continue;
    const m = entry.message;
    const meta = metaOf(m);
    const size = m.body.length + Buffer.byteLength(meta);
    let targets: PendingAppend['targets'];
    try {
      targets = targetsOf(entry.targets, now, endpoints);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'cannot register endpoint in message store');
      return new Error(`message not stored: ${(err as Error).message}`);
    }
    bytes += size;
    ready.push({ seq: 0, enqueuedAt: now, message: m, meta, size, targets, resolve: ignore, reject: ignore });
  }
  return { ready, origins, bytes };
}

function checkMessage(entry: AppendEntry): string | undefined {
  if (!entry || typeof entry !== 'object') return 'append needs { message, targets }';
  const m = entry.message;
  if (!m || typeof m !== 'object') return 'append needs a message';
  if (!Buffer.isBuffer(m.body)) return 'message body must be a Buffer';
  if (typeof m.sender !== 'string') return 'message sender must be a string';
  if (typeof m.source !== 'string') return 'message source must be a string';
  // A device's message carries its properties in its record (and builds them only when asked).
  if (m instanceof SenderMessage) return checkTargets(entry);
  if (!m.systemProperties || typeof m.systemProperties !== 'object')
    return 'message systemProperties must be an object';
  if (!m.appProperties || typeof m.appProperties !== 'object') return 'message appProperties must be an object';
  return checkTargets(entry);
}

function checkTargets(entry: AppendEntry): string | undefined {
  if (!Array.isArray(entry.targets)) return 'append targets must be an array';
  for (const t of entry.targets) {
    if (!t || typeof t.endpoint !== 'string' || t.endpoint === '') return 'each target needs a non-empty endpoint name';
    if (!Number.isSafeInteger(t.priority) || t.priority < 0)
      return `target ${t.endpoint}: priority must be a non-negative integer`;
    if (typeof t.ttlSecs !== 'number' || Number.isNaN(t.ttlSecs))
      return `target ${t.endpoint}: ttlSecs must be a number`;
  }
  return undefined;
}

/** An append's targets: one per endpoint (when named twice, the highest priority wins), with expiry times. */
function targetsOf(
  wanted: readonly AppendTarget[],
  enqueuedAt: number,
  endpoints: Endpoints,
): PendingAppend['targets'] {
  let unique: Iterable<AppendTarget> = wanted;
  if (wanted.length > 1) {
    const byEndpoint = new Map<string, AppendTarget>();
    for (const t of wanted) {
      const seen = byEndpoint.get(t.endpoint);
      if (!seen || t.priority < seen.priority) byEndpoint.set(t.endpoint, t);
    }
    unique = byEndpoint.values();
  }
  const targets: PendingAppend['targets'] = [];
  for (const t of unique) {
    targets.push({
      ep: endpoints.ensure(t.endpoint),
      priority: t.priority,
      expiresAt: t.ttlSecs > 0 && Number.isFinite(t.ttlSecs) ? enqueuedAt + Math.round(t.ttlSecs * 1000) : Infinity,
    });
  }
  return targets;
}
