import https from 'node:https';
import { BlobDirectory } from '../blob-relay/blob-dir.ts';
import { BlobMetrics } from '../blob-relay/metrics.ts';
import { blobRelay, type BlobTarget } from '../blob-relay/relay.ts';
import type { Registry } from 'prom-client';
import { edgeHubBasicAuth, parentBaseUrl } from '../registry-proxy/upstream.ts';
import { childLog } from '../util/log.ts';
import { type GatewayApiParts, gatewayClientAuth, type RegistryHandler } from './registry-api.ts';

/**
 * The gateway's `/storage/` (../blob-relay/): a lower layer forwards blob uploads to its parent,
 * the top layer keeps them in `[blob] dir`. Clients sign in as for `/v2/`.
 */
export function gatewayBlobApi(
  p: GatewayApiParts,
  q: { edgeKey: () => string; metrics: Registry; hostname: () => string; onClose(fn: () => void): void },
): RegistryHandler {
  let target: BlobTarget;
  if (p.config.parentHostname !== undefined) {
    const agent = new https.Agent({ keepAlive: true, ca: p.trustPem, maxSockets: 16 });
    q.onClose(() => agent.destroy());
    target = {
      kind: 'parent',
      base: parentBaseUrl(p.parentHost, p.parentHttpsPort),
      agent,
      auth: edgeHubBasicAuth({ hubHostName: p.hubHostName, deviceId: p.deviceId, edgeKey: q.edgeKey }),
      description: `the parent ${p.parentHost}`,
    };
  } else if (p.config.blob?.dir) {
    target = { kind: 'dir', dir: new BlobDirectory(p.config.blob.dir, p.config.blob.maxBytes) };
  } else {
    target = {
      kind: 'none',
      why: `gateway ${p.deviceId} is the top layer and its config.toml names no [blob] dir, so it keeps no uploads`,
    };
  }
  return blobRelay({
    target,
    authenticate: gatewayClientAuth(p),
    realm: q.hostname,
    metrics: new BlobMetrics(q.metrics),
    log: childLog('blob-api'),
  });
}
