import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import { parseErrorBody } from '../protocols/http/rest-errors.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { writeKeyFile } from '../pki/index.ts';
import { UserError } from '../util/errors.ts';
import type { EdgeConfig } from './config.ts';
import type { LoadedEdgeFiles } from './config-files.ts';

/**
 * The key a gateway signs its `{edge}/$edgeHub` SAS tokens with (upstream link, scope sync).
 *
 * A SAS-provisioned edge device signs with its own key (a module may sign with its device's
 * key). A device provisioned with an X.509 certificate has no key: at start it reads its
 * `$edgeHub` module identity from its parent (the hub, or a parent gateway, which serves it to
 * its children from its scope cache), proving itself with the certificate in the TLS handshake
 * (see src/scope/own-modules.ts), and signs with the module's key — what IoT Edge's identity service
 * does for the modules of a certificate-provisioned device. The key is kept in the data directory
 * (0600), so a gateway restarts and serves its devices while its parent is unreachable; when the
 * parent refuses the gateway's tokens (the module's keys were regenerated), the gateway reads
 * the key again (readEdgeHubKey).
 */

export interface EdgeHubKeyOptions {
  config: EdgeConfig;
  files: LoadedEdgeFiles;
  /** The parent's HTTPS endpoint and the trust bundle its certificate must chain to. */
  parent: { host: string; port?: number; ca: string };
  dataDir: string;
  /** How long a first start (no key kept yet) keeps asking an unreachable parent; default 60 s. */
  waitMs?: number;
  log: Logger;
  print: (line: string) => void;
}

interface KeptKey {
  deviceId: string;
  generationId?: string;
  primaryKey: string;
}

const KEY_FILE = 'edgehub-key.json';
const RETRY_MS = 1000;
const REQUEST_TIMEOUT_MS = 10_000;

/** A refusal from the parent: asking again will not help, the configuration or registry must change. */
class Refused extends Error {}

export async function edgeHubKey(o: EdgeHubKeyOptions): Promise<string> {
  const auth = o.config.provisioning?.authentication;
  if (!auth)
    throw new UserError(
      '[provisioning.authentication] is missing',
      'Use a connection_string, or method = "sas" with device_id_pk, or method = "x509" with identity_cert and identity_pk',
    );
  if (auth.method === 'sas') return auth.deviceIdPk;
  const identity = o.files.identity;
  if (!identity)
    throw new UserError(
      `the identity certificate ${auth.identityCert} and key ${auth.identityPk} could not be read`,
      'Run `strata edge check --config ...` for the reason',
    );
  const deviceId = o.config.provisioning!.deviceId;
  const keptPath = join(o.dataDir, KEY_FILE);
  const kept = readKept(keptPath, deviceId);
  const where = o.parent.port && o.parent.port !== 443 ? `${o.parent.host}:${o.parent.port}` : o.parent.host;
  const deadline = Date.now() + (o.waitMs ?? 60_000);
  for (let attempt = 1; ; attempt++) {
    try {
      return await readEdgeHubKey(o);
    } catch (err) {
      if (err instanceof UserError) throw err;
      if (kept) {
        o.print(
          `warning: cannot reach the parent ${where} to read the ${EDGE_HUB} key (${(err as Error).message}); using the key kept from an earlier start`,
        );
        return kept.primaryKey;
      }
      if (Date.now() >= deadline) {
        throw new UserError(
          `cannot read the ${EDGE_HUB} key of ${deviceId} from the parent ${where}: ${(err as Error).message}`,
          'An edge device provisioned with a certificate reads its key from its parent on its first start: start the parent (and check parent_hostname and trust_bundle_cert), then start this gateway again',
        );
      }
      if (attempt === 1)
        o.print(
          `waiting for the parent ${where} to read the ${EDGE_HUB} key (X.509 provisioning): ${(err as Error).message}`,
        );
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }
}

/**
 * One reading of the `$edgeHub` key from the parent with the identity certificate, kept on disk
 * when it changed. Throws UserError when the parent refuses (the certificate or the module is
 * not what it should be), a plain Error when the parent cannot be asked now.
 */
export async function readEdgeHubKey(
  o: Pick<EdgeHubKeyOptions, 'config' | 'files' | 'parent' | 'dataDir' | 'log'>,
): Promise<string> {
  const deviceId = o.config.provisioning!.deviceId;
  const identity = o.files.identity!;
  const keptPath = join(o.dataDir, KEY_FILE);
  const where = o.parent.port && o.parent.port !== 443 ? `${o.parent.host}:${o.parent.port}` : o.parent.host;
  let module: ModuleAnswer;
  try {
    module = await fetchOwnModule(o.parent, deviceId, identity);
  } catch (err) {
    if (!(err instanceof Refused)) throw err;
    throw new UserError(
      `the parent ${where} refused the identity certificate of edge device ${deviceId}: ${err.message}`,
      `Register the certificate at the hub: the edge device with authentication type selfSigned and the certificate's thumbprint, or type certificateAuthority (CN = ${deviceId}) with its CA added by \`strata hub ca add\``,
    );
  }
  const primaryKey = primaryKeyOf(module, deviceId);
  if (readKept(keptPath, deviceId)?.primaryKey !== primaryKey) {
    writeKeyFile(
      keptPath,
      `${JSON.stringify({ deviceId, generationId: module.generationId, primaryKey } satisfies KeptKey)}\n`,
    );
  }
  o.log.info(
    { parent: where, deviceId },
    `read the ${EDGE_HUB} key of ${deviceId} from the parent (X.509 provisioning)`,
  );
  return primaryKey;
}

function readKept(path: string, deviceId: string): KeptKey | undefined {
  try {
    const k = JSON.parse(readFileSync(path, 'utf8')) as KeptKey;
    return k.deviceId === deviceId && typeof k.primaryKey === 'string' && k.primaryKey !== '' ? k : undefined;
  } catch {
    return undefined;
  }
}

interface ModuleAnswer {
  generationId?: string;
  authentication?: { type?: string; symmetricKey?: { primaryKey?: string | null } };
}

function primaryKeyOf(module: ModuleAnswer, deviceId: string): string {
  const a = module.authentication;
  const key = a?.symmetricKey?.primaryKey;
  if ((a?.type ?? 'sas') !== 'sas' || typeof key !== 'string' || key === '') {
    throw new UserError(
      `module ${deviceId}/${EDGE_HUB} has no SAS key (authentication type ${a?.type ?? 'none'}), so the gateway has nothing to sign its tokens with`,
      `Give ${deviceId}/${EDGE_HUB} SAS authentication at the hub (the default for a new edge device)`,
    );
  }
  return key;
}

function fetchOwnModule(
  parent: EdgeHubKeyOptions['parent'],
  deviceId: string,
  identity: { certPem: string; keyPem: string },
): Promise<ModuleAnswer> {
  const path = `/devices/${encodeURIComponent(deviceId)}/modules/${encodeURIComponent(EDGE_HUB)}?api-version=2021-04-12`;
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        method: 'GET',
        host: parent.host,
        port: parent.port ?? 443,
        path,
        ca: parent.ca,
        cert: identity.certPem,
        key: identity.keyPem,
        agent: false,
        timeout: REQUEST_TIMEOUT_MS,
        headers: { Accept: 'application/json', 'User-Agent': 'strata-edge' },
        ...(isIP(parent.host) ? {} : { servername: parent.host }),
        checkServerIdentity: (_h: string, cert: PeerCertificate) => checkServerIdentity(parent.host, cert),
      },
      (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (status === 401 || status === 403 || status === 404) {
            const { code, text: why } = parseErrorBody(text, status);
            return reject(new Refused(`${why} (${code}, HTTP ${status})`));
          }
          if (status < 200 || status >= 300) return reject(new Error(`HTTP ${status}: ${text.slice(0, 200)}`));
          try {
            resolve(JSON.parse(text) as ModuleAnswer);
          } catch {
            reject(new Error('the answer is not JSON'));
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (/CERT|SELF_SIGNED|UNABLE_TO|ALTNAME/.test(err.code ?? '')) {
        reject(
          new UserError(
            `the parent ${parent.host} presented a certificate this gateway does not trust (${err.code})`,
            'Check trust_bundle_cert and parent_hostname',
          ),
        );
      } else reject(new Error(err.code ? `${err.code}: ${err.message}` : err.message));
    });
    req.end();
  });
}
