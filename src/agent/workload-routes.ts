import { createHmac } from 'node:crypto';

/**
 * The two workload API calls a module's SDK makes (ModuleClient.fromEnvironment): sign a SAS
 * token's string-to-sign with the module's key, and fetch the trust bundle. Pure request ->
 * response logic, so the refusals are unit-tested; workload-api.ts puts it on a socket.
 */

/** What the workload API knows of the one module a socket serves. */
export interface WorkloadModule {
  moduleId: string;
  generationId: string;
  /** The module identity's SAS keys at the hub, base64 (as the registry holds them). */
  primaryKey: string;
  secondaryKey?: string;
}

export interface WorkloadRequest {
  method: string;
  /** Path and query, as received (`/modules/m/genid/g/sign?api-version=...`). */
  url: string;
  body: Buffer;
}

export interface WorkloadResponse {
  status: number;
  /** JSON body: `{ digest }`, `{ certificate }`, or IoT Edge's error shape `{ message }`. */
  body: Record<string, string>;
}

/**
 * API versions iotedged has served; the two routes kept the same shape across all of them, so
 * any of these is answered alike. The SDKs send the one they were built for.
 */
export const WORKLOAD_API_VERSIONS: readonly string[] = [
  '2018-06-28',
  '2019-01-30',
  '2019-10-22',
  '2019-11-05',
  '2020-07-07',
  '2020-10-10',
  '2021-12-07',
  '2022-08-03',
];

const SIGN_PATH = /^\/modules\/([^/]+)\/genid\/([^/]+)\/sign$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

const error = (status: number, message: string): WorkloadResponse => ({ status, body: { message } });

/**
 * Answers one request on `caller`'s socket. The socket names the caller, so a request to sign
 * for any other module id is refused with 403 (as IoT Edge refuses a caller that is not the
 * module); a wrong generation id finds no key, 404 as iotedged answers it.
 */
export function handleWorkloadRequest(
  caller: WorkloadModule,
  trustBundlePem: string,
  req: WorkloadRequest,
): WorkloadResponse {
  const q = req.url.indexOf('?');
  const path = q < 0 ? req.url : req.url.slice(0, q);
  const version = new URLSearchParams(q < 0 ? '' : req.url.slice(q + 1)).get('api-version');

  const isTrust = path === '/trust-bundle';
  const sign = SIGN_PATH.exec(path);
  if (!isTrust && !sign) return error(404, `No route for ${req.method} ${path}`);
  if (!version || !WORKLOAD_API_VERSIONS.includes(version)) return error(400, 'Invalid or missing API version');

  if (isTrust) {
    if (req.method !== 'GET') return error(405, `Method ${req.method} is not allowed on /trust-bundle`);
    return { status: 200, body: { certificate: trustBundlePem } };
  }

  if (req.method !== 'POST') return error(405, `Method ${req.method} is not allowed on the sign route`);
  const moduleId = decodeSegment(sign![1]);
  const genId = decodeSegment(sign![2]);
  if (moduleId === undefined || genId === undefined) return error(400, 'Bad path: invalid percent-encoding');
  if (moduleId !== caller.moduleId)
    return error(403, `Forbidden: this socket serves module '${caller.moduleId}', not '${moduleId}'`);
  if (genId !== caller.generationId) return error(404, `Module not found: no key for generation id '${genId}'`);

  let parsed: unknown;
  try {
    parsed = JSON.parse(req.body.toString('utf8'));
  } catch {
    return error(400, 'Bad body: not JSON');
  }
  if (!parsed || typeof parsed !== 'object') return error(400, 'Bad body: expected an object');
  const { keyId, algo, data } = parsed as Record<string, unknown>;
  if (typeof keyId !== 'string') return error(400, 'Bad body: keyId must be a string');
  if (typeof algo !== 'string') return error(400, 'Bad body: algo must be a string');
  if (typeof data !== 'string') return error(400, 'Bad body: data must be a string');
  if (algo.toUpperCase() !== 'HMACSHA256') return error(400, `Bad body: algo '${algo}' is not supported (HMACSHA256)`);
  const key = keyId === 'primary' ? caller.primaryKey : keyId === 'secondary' ? caller.secondaryKey : undefined;
  if (!key) return error(404, `Module not found: no key '${keyId}'`);
  if (!BASE64.test(data)) return error(422, 'Invalid base64 string in data');

  const digest = createHmac('sha256', Buffer.from(key, 'base64')).update(Buffer.from(data, 'base64')).digest('base64');
  return { status: 200, body: { digest } };
}

function decodeSegment(s: string): string | undefined {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}
