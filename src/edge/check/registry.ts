/** The registry check: the parent's `/v2/` (or, at the top, `[registry] upstream`) answers as a registry. */
import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import type { RegistrySettings } from '../../registry-proxy/config.ts';
import { result, type CheckResult } from './checks.ts';
import type { ProbeOutcome } from './upstream.ts';

interface Answer {
  status: number;
  registry: boolean;
}

function getV2(url: URL, ca: string[] | undefined, timeoutMs: number): Promise<Answer> {
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(url, { timeout: timeoutMs, ...(ca && ca.length > 0 ? { ca } : {}) }, (res) => {
      res.resume();
      resolve({
        status: res.statusCode ?? 0,
        registry: res.headers['docker-distribution-api-version'] === 'registry/2.0',
      });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

const answered = (a: Answer) => a.registry && (a.status === 200 || a.status === 401);

export async function checkRegistryPath(o: {
  upstreamHost: string;
  isParent: boolean;
  registry?: RegistrySettings;
  trustPems: string[];
  /** The HTTPS probe's outcome: without TLS there, this check has nothing to add. */
  port443: ProbeOutcome;
  /** The parent's HTTPS port: 443, or [strata] parent_https_port. */
  httpsPort?: number;
  timeoutMs: number;
}): Promise<CheckResult> {
  if (o.isParent) {
    const port = o.httpsPort ?? 443;
    const title = `parent ${o.upstreamHost} serves the registry API (/v2/ on ${port})`;
    if (o.port443.kind !== 'ok')
      return result(
        'registry',
        'skipped',
        `cannot check: the parent does not answer on ${port} (see above)`,
        undefined,
        title,
      );
    const host = isIP(o.upstreamHost) === 6 ? `[${o.upstreamHost}]` : o.upstreamHost;
    try {
      const a = await getV2(new URL(`https://${host}:${port}/v2/`), o.trustPems, o.timeoutMs);
      if (answered(a))
        return result('registry', 'pass', `/v2/ answered as a registry (HTTP ${a.status})`, undefined, title);
      return result(
        'registry',
        'warning',
        `/v2/ answered HTTP ${a.status} without the registry API: images cannot be pulled through the parent`,
        'Run a Strata gateway on the parent (each serves /v2/); the top layer names the registry in [registry] upstream',
        title,
      );
    } catch (err) {
      return result('registry', 'error', `/v2/ failed: ${(err as Error).message}`, undefined, title);
    }
  }
  const upstream = o.registry?.upstream;
  const title = `upstream registry answers (${upstream ?? '[registry] upstream'})`;
  if (!upstream)
    return result(
      'registry',
      'skipped',
      'no [registry] upstream: the gateways below cannot pull images through this one',
      undefined,
      title,
    );
  try {
    const a = await getV2(new URL(`${upstream}/v2/`), undefined, o.timeoutMs);
    if (answered(a))
      return result('registry', 'pass', `/v2/ answered as a registry (HTTP ${a.status})`, undefined, title);
    return result(
      'registry',
      'warning',
      `/v2/ answered HTTP ${a.status} without the registry API`,
      'Check registry.upstream: it must be the base URL of an OCI (Docker) registry',
      title,
    );
  } catch (err) {
    return result(
      'registry',
      'error',
      `cannot reach ${upstream}: ${(err as Error).message}`,
      'Check registry.upstream, the network path and any firewall between this device and the registry',
      title,
    );
  }
}
