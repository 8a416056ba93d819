import { gzipSync } from 'node:zlib';
import type { MethodRequest } from '../model/methods.ts';
import { filteredLines, type LogFilter, readLogFilter } from './log-filter.ts';

/**
 * The direct methods IoT Edge's agent answers on `$edgeAgent` (names matched without regard to
 * case, as the original does): `ping`, `RestartModule` {schemaVersion, id} and `GetModuleLogs`
 * {schemaVersion, items: [{id (a pattern of module names), filter: {tail, since, until, loglevel,
 * regex} (log-filter.ts)}], encoding
 * (none|gzip), contentType (text|json)}, answered with one `{id, payload}` per module
 * (`payloadBytes`, base64, when gzipped).
 */

export interface AgentMethodTarget {
  moduleNames(): string[];
  restartModule(name: string): Promise<void>;
  logs(name: string, opts: { tail?: number; since?: number; until?: number }): Promise<AsyncIterable<string>>;
}

export interface MethodAnswer {
  status: number;
  payload: unknown;
}

const bad = (message: string): MethodAnswer => ({ status: 400, payload: { message } });

export async function answerAgentMethod(agent: AgentMethodTarget, req: MethodRequest): Promise<MethodAnswer> {
  let body: unknown = null;
  if (req.payload.length > 0) {
    try {
      body = JSON.parse(req.payload.toString('utf8'));
    } catch {
      return bad('the payload is not JSON');
    }
  }
  switch (req.methodName.toLowerCase()) {
    case 'ping':
      return { status: 200, payload: null };
    case 'restartmodule':
      return restartModule(agent, body);
    case 'getmodulelogs':
      return getModuleLogs(agent, body);
    default:
      return { status: 501, payload: { message: `$edgeAgent has no method '${req.methodName}'` } };
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function restartModule(agent: AgentMethodTarget, body: unknown): Promise<MethodAnswer> {
  if (!isObject(body) || typeof body.id !== 'string' || !body.id)
    return bad('RestartModule needs {"schemaVersion": "1.0", "id": "<module name>"}');
  if (!agent.moduleNames().includes(body.id))
    return { status: 404, payload: { message: `no module named '${body.id}' in the deployment` } };
  await agent.restartModule(body.id);
  return { status: 200, payload: null };
}

async function getModuleLogs(agent: AgentMethodTarget, body: unknown): Promise<MethodAnswer> {
  if (!isObject(body) || !Array.isArray(body.items) || body.items.length === 0)
    return bad(
      'GetModuleLogs needs {"schemaVersion": "1.0", "items": [{"id": "<module name or pattern>", "filter": {"tail": N, "since": "10m", "until": ..., "loglevel": 0-7, "regex": "..."}}]}',
    );
  const encoding = body.encoding ?? 'none';
  const contentType = body.contentType ?? 'text';
  if (encoding !== 'none' && encoding !== 'gzip')
    return bad(`encoding: ${JSON.stringify(encoding)} is not none or gzip`);
  if (contentType !== 'text' && contentType !== 'json')
    return bad(`contentType: ${JSON.stringify(contentType)} is not text or json`);
  const out: Array<Record<string, unknown>> = [];
  for (const [i, item] of body.items.entries()) {
    if (!isObject(item) || typeof item.id !== 'string') return bad(`items[${i}].id: must be a module name or pattern`);
    let pattern: RegExp;
    try {
      pattern = new RegExp(`^(?:${item.id})$`);
    } catch {
      return bad(`items[${i}].id: ${JSON.stringify(item.id)} is not a valid pattern`);
    }
    let filter: LogFilter;
    try {
      filter = readLogFilter(item.filter, `items[${i}]`, Date.now());
    } catch (err) {
      return bad((err as Error).message);
    }
    for (const name of agent.moduleNames().filter((n) => pattern.test(n))) {
      const lines = await filteredLines((opts) => agent.logs(name, opts), filter);
      const content =
        contentType === 'json'
          ? JSON.stringify(lines.map((text) => ({ moduleId: name, text })))
          : lines.map((l) => `${l}\n`).join('');
      out.push(
        encoding === 'gzip'
          ? { id: name, payloadBytes: gzipSync(content).toString('base64') }
          : { id: name, payload: contentType === 'json' ? JSON.parse(content) : content },
      );
    }
  }
  return { status: 200, payload: out };
}
