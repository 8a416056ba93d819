/**
 * `strata edge check`: runs the check groups in the order of the table in checks.ts. Each group
 * lives in its own file; this runner feeds them what the earlier ones found.
 */
import { resolve } from 'node:path';
import { childLog } from '../../util/log.ts';
import { defaultEdgeDataDir } from '../local.ts';
import { httpsPortSetting } from '../settings.ts';
import {
  checkEdgeCaCertificate,
  checkEdgeCaChain,
  checkEdgeCaPresent,
  checkIdentityCert,
  checkTrustBundle,
  type EdgeCaState,
} from './certificates.ts';
import { idsOf, result, type CheckId, type CheckResult, UPSTREAM_PORTS } from './checks.ts';
import { checkClock, fetchUpstreamDate } from './clock.ts';
import { checkConfigFile, checkProvisioning } from './configuration.ts';
import { userMessage } from './describe.ts';
import { checkRegistryPath } from './registry.ts';
import { checkHostnamePattern, checkHostnameSetting, checkParentHostname } from './hostnames.ts';
import { checkServerCertificate } from './server-certificate.ts';
import { checkStorage, diskReserve, runningStoreFull } from './storage.ts';
import { CONNECT_TIMEOUT_MS, probeUpstream, upstreamResult } from './upstream.ts';

export { titleOf, upstreamTitle, UPSTREAM_PORTS, type CheckId, type CheckResult, type CheckStatus } from './checks.ts';
export { CLOCK_SKEW_LIMIT_MS } from './clock.ts';
export { EXPIRY_WARNING_DAYS } from './describe.ts';
export { checkStorage } from './storage.ts';
export { CONNECT_TIMEOUT_MS, probeUpstream, type ProbeOutcome } from './upstream.ts';

const log = childLog('edge-check');

export interface EdgeCheckOptions {
  /** The gateway's config.toml. */
  configPath: string;
  /** The gateway's data directory (default ./.strata/edge-{deviceId}, as `strata edge start`). */
  dataDir?: string;
  /** Per connection attempt (default 2 s). */
  timeoutMs?: number;
  /** What "now" is for certificate dates (the clock check always uses the real clock). */
  now?: Date;
}

function skippedAll(ids: CheckId[], why: string): CheckResult[] {
  return ids.map((id) => result(id, 'skipped', `cannot check: ${why}`));
}

/** What cannot run without an accepted config, besides the server certificate. */
const CONFIG_DEPENDENT: CheckId[] = ['provisioning', ...idsOf('certificates')];

/**
 * Everything `strata edge check` looks at, in the order it prints them. Never throws for a bad
 * configuration or an unreachable upstream: each problem is a result with what to do about it.
 */
export async function runEdgeChecks(o: EdgeCheckOptions): Promise<CheckResult[]> {
  const now = o.now ?? new Date();
  const timeoutMs = o.timeoutMs ?? CONNECT_TIMEOUT_MS;
  const out: CheckResult[] = [];
  const guard = async (id: CheckId, fn: () => CheckResult | Promise<CheckResult>): Promise<CheckResult> => {
    try {
      return await fn();
    } catch (err) {
      log.error({ err, check: id }, 'a check failed unexpectedly');
      const m = userMessage(err);
      return result(id, 'error', `the check itself failed: ${m.message}`, m.hint);
    }
  };

  const { check: fileCheck, loaded } = checkConfigFile(o.configPath);
  out.push(fileCheck);
  const host = checkHostnameSetting(loaded);
  out.push(host.check);
  const parent = checkParentHostname(loaded);
  out.push(parent.check);
  out.push(checkHostnamePattern(host.hostname, host.explicit, parent.parent));

  const config = loaded.config;
  const deviceId = config?.provisioning?.deviceId;
  const dataDir = o.dataDir ? resolve(o.dataDir) : deviceId ? resolve(defaultEdgeDataDir(deviceId)) : undefined;
  const dataDirHow = o.dataDir ? '' : deviceId ? `default for edge device ${deviceId}` : '';

  let trustPems: string[] = [];
  if (config) {
    out.push(await guard('provisioning', () => checkProvisioning(config)));
    const trust = checkTrustBundle(config, now);
    trustPems = trust.pems;
    out.push(trust.check);
    const caState: EdgeCaState = {};
    out.push(await guard('edge-ca', () => checkEdgeCaPresent(config, dataDir, now)));
    out.push(await guard('edge-ca-cert', () => checkEdgeCaCertificate(config, now, caState)));
    out.push(await guard('edge-ca-chain', () => checkEdgeCaChain(config, trustPems, caState, now)));
    out.push(await guard('identity-cert', () => checkIdentityCert(config, now)));
  } else {
    out.push(...skippedAll(CONFIG_DEPENDENT, loaded.refusedBecause ?? 'the config file was refused'));
  }

  if (config)
    out.push(
      await guard('server-cert', () =>
        checkServerCertificate(host.hostname, config, dataDir, trustPems, now, timeoutMs),
      ),
    );
  else out.push(...skippedAll(['server-cert'], loaded.refusedBecause ?? 'the config file was refused'));

  // The validated values, not the config's: a refused parent_hostname was replaced by a stand-in there.
  const parentRefused = parent.check.status === 'error';
  const upstreamHost = !config || parentRefused ? undefined : (parent.parent ?? config.provisioning?.iothubHostname);
  const isParent = parent.parent !== undefined;
  if (upstreamHost) {
    // An unprivileged parent serves HTTPS elsewhere ([strata] parent_https_port); a bad value is the config's to report.
    let httpsPort = 443;
    try {
      if (config) httpsPort = httpsPortSetting(config, 'parent_https_port') ?? 443;
    } catch {
      // keep 443
    }
    const portOf = (p: { port: number }) => (p.port === 443 ? httpsPort : p.port);
    const [date, ...outcomes] = await Promise.all([
      fetchUpstreamDate(upstreamHost, timeoutMs, httpsPort),
      ...UPSTREAM_PORTS.map((p) => probeUpstream(upstreamHost, portOf(p), trustPems, timeoutMs, now)),
    ]);
    const leaves = outcomes.flatMap((x) => (x.leaf ? [x.leaf] : []));
    out.push(checkClock(upstreamHost, date, leaves));
    out.push(checkStorage(dataDir, dataDirHow, diskReserve(config), await runningStoreFull(dataDir, timeoutMs)));
    UPSTREAM_PORTS.forEach((p, i) => out.push(upstreamResult(p, upstreamHost, isParent, outcomes[i], portOf(p))));
    const port443 = outcomes[UPSTREAM_PORTS.findIndex((p) => p.port === 443)];
    out.push(
      await guard('registry', () =>
        checkRegistryPath({
          ...{ upstreamHost, isParent, trustPems, port443, httpsPort, timeoutMs },
          registry: config?.registry,
        }),
      ),
    );
  } else {
    const why = parentRefused
      ? 'parent_hostname is refused (see above)'
      : config
        ? 'no upstream: neither parent_hostname nor a provisioned IoT hub host name is set'
        : (loaded.refusedBecause ?? 'the config file was refused');
    out.push(...skippedAll(['clock'], why));
    out.push(checkStorage(dataDir, dataDirHow, diskReserve(config), await runningStoreFull(dataDir, timeoutMs)));
    out.push(...skippedAll(idsOf('upstream'), why));
  }
  for (const r of out)
    if (r.status === 'error' || r.status === 'warning')
      log.debug({ check: r.id, status: r.status, detail: r.detail }, 'edge check finding');
  return out;
}
