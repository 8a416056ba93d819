import { gzipSync } from 'node:zlib';
import type { MethodRequest } from '../model/methods.ts';
import { filteredLines, type LogFilter, readLogFilter } from './log-filter.ts';
import { type BlobUploader, logBlobName, type UploadTasks } from './log-upload.ts';

/**
 * The direct methods IoT Edge's agent answers on `$edgeAgent` (names matched without regard to
 * case, as the original does): `ping`, `RestartModule` {schemaVersion, id} and `GetModuleLogs`
 * {schemaVersion, items: [{id (a pattern of module names), filter: {tail, since, until, loglevel,
 * regex} (log-filter.ts)}], encoding
 * (none|gzip), contentType (text|json)}, answered with one `{id, payload}` per module
 * (`payloadBytes`, base64, when gzipped). `UploadModuleLogs` {..., sasUrl} sends the same logs
 * as blobs (log-upload.ts) and answers a correlation id at once; `GetTaskStatus` {correlationId}
 * tells how that went.
 */

export interface AgentMethodTarget {
  moduleNames(): string[];
  restartModule(name: string): Promise<void>;
  logs(name: string, opts: { tail?: number; since?: number; until?: number }): Promise<AsyncIterable<string>>;
  /** Where `UploadModuleLogs` sends blobs; without it the method is not offered. */
  logUpload?: { tasks: UploadTasks; upload: BlobUploader; hub: string; device: string };
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
    case 'uploadmodulelogs':
      return uploadModuleLogs(agent, body);
    case 'gettaskstatus':
      return getTaskStatus(agent, body);
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

interface ModuleLogs {
  name: string;
  /** The logs as text lines, or as IoT Edge's JSON array. */
  content: string;
}

/** Reads a GetModuleLogs-shaped request into each matching module's logs, or a 400 answer. */
async function collectLogs(
  agent: AgentMethodTarget,
  body: unknown,
  method: string,
): Promise<{ logs: ModuleLogs[]; gzip: boolean; json: boolean } | MethodAnswer> {
  if (!isObject(body) || !Array.isArray(body.items) || body.items.length === 0)
    return bad(
      `${method} needs {"schemaVersion": "1.0", "items": [{"id": "<module name or pattern>", "filter": {"tail": N, "since": "10m", "until": ..., "loglevel": 0-7, "regex": "..."}}]}`,
    );
  const encoding = body.encoding ?? 'none';
  const contentType = body.contentType ?? 'text';
  if (encoding !== 'none' && encoding !== 'gzip')
    return bad(`encoding: ${JSON.stringify(encoding)} is not none or gzip`);
  if (contentType !== 'text' && contentType !== 'json')
    return bad(`contentType: ${JSON.stringify(contentType)} is not text or json`);
  const logs: ModuleLogs[] = [];
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
      logs.push({ name, content });
    }
  }
  return { logs, gzip: encoding === 'gzip', json: contentType === 'json' };
}

async function getModuleLogs(agent: AgentMethodTarget, body: unknown): Promise<MethodAnswer> {
  const got = await collectLogs(agent, body, 'GetModuleLogs');
  if ('status' in got) return got;
  return {
    status: 200,
    payload: got.logs.map(({ name, content }) =>
      got.gzip
        ? { id: name, payloadBytes: gzipSync(content).toString('base64') }
        : { id: name, payload: got.json ? JSON.parse(content) : content },
    ),
  };
}

async function uploadModuleLogs(agent: AgentMethodTarget, body: unknown): Promise<MethodAnswer> {
  const up = agent.logUpload;
  if (!up) return { status: 501, payload: { message: 'this agent cannot upload logs' } };
  if (!isObject(body) || typeof body.sasUrl !== 'string' || !body.sasUrl)
    return bad('UploadModuleLogs needs a sasUrl: https://$upstream/storage/CONTAINER, or a blob container SAS URL');
  const sasUrl = body.sasUrl;
  const got = await collectLogs(agent, body, 'UploadModuleLogs');
  if ('status' in got) return got;
  const correlationId = up.tasks.start(async () => {
    for (const { name, content } of got.logs) {
      const blob = logBlobName({ hub: up.hub, device: up.device, module: name, json: got.json, gzip: got.gzip });
      const bytes = got.gzip ? gzipSync(content) : Buffer.from(content);
      const type = got.gzip ? 'application/gzip' : got.json ? 'application/json' : 'text/plain';
      await up.upload(sasUrl, blob, bytes, type);
    }
  });
  return { status: 200, payload: { status: 'NotStarted', message: '', correlationId } };
}

function getTaskStatus(agent: AgentMethodTarget, body: unknown): MethodAnswer {
  if (!isObject(body) || typeof body.correlationId !== 'string')
    return bad('GetTaskStatus needs {"schemaVersion": "1.0", "correlationId": "<from UploadModuleLogs>"}');
  const t = agent.logUpload?.tasks.status(body.correlationId) ?? { status: 'Unknown', message: '' };
  return { status: 200, payload: { ...t, correlationId: body.correlationId } };
}
