import 'reflect-metadata';
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { isIP } from 'node:net';
import { hostname as osHostname, tmpdir } from 'node:os';
import { dirname, join, resolve, sep } from 'node:path';
import tls from 'node:tls';
import { parse as parseToml } from 'smol-toml';
import {
  isCa,
  keyMatchesCertificate,
  parseCertificate,
  readCertificateFile,
  readKeyFile,
  splitPemCertificates,
  verifyChain,
  type VerifyResult,
} from '../pki/index.ts';
import { DEFAULT_DISK_RESERVE_BYTES, isDiskFull, mib, reserveBytesOf, statfsFree } from '../store/disk-headroom.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';
import { ConfigError, parseEdgeConfig, type Diagnostic, type EdgeConfig } from './config.ts';
import { checkHostname, isIpAddress } from './hostname.ts';
import { defaultEdgeDataDir, readGatewayState, runningGatewayPid } from './local.ts';
import { EDGEHUB_SAN, QUICKSTART_CA_DAYS, edgePkiPaths } from './security-manager.ts';

const log = childLog('edge-check');

export type CheckStatus = 'pass' | 'warning' | 'error' | 'skipped';

/** The outcome of one check: what was checked, how it went, what was seen, and what to do when it failed. */
export interface CheckResult {
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

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

/** The ports a gateway's upstream must answer on, as the original checks them. */
export const UPSTREAM_PORTS = [
  { port: 8883, protocol: 'MQTT' },
  { port: 5671, protocol: 'AMQP' },
  { port: 443, protocol: 'HTTPS / WebSockets' },
] as const;
export const CONNECT_TIMEOUT_MS = 2000;
export const EXPIRY_WARNING_DAYS = 7;
export const CLOCK_SKEW_LIMIT_MS = 5 * 60 * 1000;

const DAY_MS = 24 * 3600 * 1000;
/** Replaces a refused hostname while the rest of the config is read; never dialled or compared. */
const STAND_IN_HOST = 'refused-hostname.invalid';

// ------------------------------------------------------------------------------------------
// Small helpers

const result = (id: string, title: string, status: CheckStatus, detail: string, fix?: string): CheckResult => ({ id, title, status, detail, ...(fix ? { fix } : {}) });

function iso(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function daysBetween(a: Date, b: Date): number {
  return Math.round(((b.getTime() - a.getTime()) / DAY_MS) * 10) / 10;
}

function subjectOf(cert: X509Certificate): string {
  return cert.subject.replace(/\n/g, ', ');
}

function commonNameOf(cert: X509Certificate): string | undefined {
  return /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
}

function namesOf(cert: X509Certificate): string {
  return cert.subjectAltName ?? 'none';
}

/** How a certificate's validity window stands at `now`: an error when outside it, a warning in its last week. */
function validity(cert: X509Certificate, now: Date, what: string): { status: 'pass' | 'warning' | 'error'; text: string } {
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (now < from) return { status: 'error', text: `${what} is not valid before ${iso(from)} (is this host's clock behind?)` };
  if (now > to) return { status: 'error', text: `${what} expired on ${iso(to)}` };
  const left = to.getTime() - now.getTime();
  if (left < EXPIRY_WARNING_DAYS * DAY_MS) return { status: 'warning', text: `${what} expires in ${daysBetween(now, to)} days (${iso(to)})` };
  return { status: 'pass', text: `${what} is valid until ${iso(to)}` };
}

function worst(...statuses: CheckStatus[]): CheckStatus {
  for (const s of ['error', 'warning', 'pass', 'skipped'] as const) if (statuses.includes(s)) return s;
  return 'skipped';
}

function userMessage(err: unknown): { message: string; hint?: string } {
  if (err instanceof UserError) return { message: err.message, hint: err.hint };
  return { message: err instanceof Error ? err.message : String(err) };
}

/** Lines of the top-level keys (those before the first [section]): key -> 1-based line. */
function topLevelKeyLines(text: string): Map<string, number> {
  const lines = new Map<string, number>();
  const all = text.split(/\r?\n/);
  for (let i = 0; i < all.length; i++) {
    if (/^\s*\[/.test(all[i])) break;
    const m = /^\s*([A-Za-z0-9_-]+)\s*=/.exec(all[i]);
    if (m && !lines.has(m[1])) lines.set(m[1], i + 1);
  }
  return lines;
}

function lineText(line: number | undefined): string {
  return line ? `line ${line}: ` : '';
}

// ------------------------------------------------------------------------------------------
// Configuration

interface LoadedForCheck {
  path: string;
  /** The parsed config when the file was accepted. */
  config?: EdgeConfig;
  /** The raw TOML document when the text parses (even if the config was refused). */
  raw?: Record<string, unknown>;
  topLines: Map<string, number>;
  /** Why the dependent checks cannot run, when the config was refused. */
  refusedBecause?: string;
}

/** Diagnostics about hostname / parent_hostname belong to the hostname checks, not to the file check. */
function isHostnameDiagnostic(d: Diagnostic, topLines: Map<string, number>): boolean {
  if (d.line !== undefined) return d.line === topLines.get('hostname') || d.line === topLines.get('parent_hostname');
  return /^no hostname set/.test(d.message);
}

function checkConfigFile(configPath: string): { check: CheckResult; loaded: LoadedForCheck } {
  const id = 'config-file';
  const title = 'config file is readable and well-formed';
  const path = resolve(configPath);
  const loaded: LoadedForCheck = { path, topLines: new Map() };
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    loaded.refusedBecause = 'the config file could not be read';
    const detail =
      code === 'ENOENT' ? `config file not found: ${path}` : code === 'EACCES' || code === 'EPERM' ? `cannot read ${path}: permission denied` : code === 'EISDIR' ? `${path} is a directory` : `cannot read ${path}: ${(err as Error).message}`;
    const fix = code === 'EACCES' || code === 'EPERM' ? 'Run the check as a user who may read it (the gateway must read it too)' : "Pass the gateway's config.toml with --config";
    return { check: result(id, title, 'error', detail, fix), loaded };
  }
  loaded.topLines = topLevelKeyLines(text);
  try {
    loaded.raw = parseToml(text) as Record<string, unknown>;
  } catch {
    // Reported through parseEdgeConfig's line-numbered diagnostic below.
  }
  let diagnostics: Diagnostic[];
  try {
    const parsed = parseEdgeConfig(text, path, dirname(path));
    loaded.config = parsed.config;
    diagnostics = parsed.diagnostics;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    diagnostics = err.diagnostics;
  }
  // Only a document that parses has hostname findings of its own; a syntax error stays here.
  const own = loaded.raw ? diagnostics.filter((d) => !isHostnameDiagnostic(d, loaded.topLines)) : diagnostics;
  const errors = own.filter((d) => d.level === 'error');
  const warnings = own.filter((d) => d.level === 'warning');
  if (!loaded.config && errors.length === 0) {
    // Only the hostname settings were refused: read the rest with stand-ins so the other checks still run.
    const lines = text.split(/\r?\n/);
    for (const key of ['hostname', 'parent_hostname']) {
      const line = loaded.topLines.get(key);
      if (line) lines[line - 1] = `${key} = "${STAND_IN_HOST}"`;
    }
    try {
      loaded.config = parseEdgeConfig(lines.join('\n'), path, dirname(path)).config;
    } catch {
      /* the dependent checks are skipped below */
    }
  }
  if (!loaded.raw && loaded.config) {
    // Accepted only after mending (a `key: "value"` line): take the hostnames from the parsed config.
    loaded.raw = { hostname: loaded.config.hostnameFromFile ? loaded.config.hostname : undefined, parent_hostname: loaded.config.parentHostname };
  }
  if (!loaded.config) {
    loaded.refusedBecause = errors.length > 0 ? 'the config file has errors (see "config file" above)' : 'the hostname settings are refused (see above)';
  }
  const describe = (ds: Diagnostic[]) => ds.map((d) => `${lineText(d.line)}${d.message}`).join('\n');
  const fixes = (ds: Diagnostic[]) => [...new Set(ds.filter((d) => d.fix).map((d) => `${lineText(d.line)}${d.fix}`))].join('\n');
  if (errors.length > 0) return { check: result(id, title, 'error', `${path}:\n${describe([...errors, ...warnings])}`, fixes([...errors, ...warnings])), loaded };
  if (warnings.length > 0) return { check: result(id, title, 'warning', `${path}:\n${describe(warnings)}`, fixes(warnings)), loaded };
  return { check: result(id, title, 'pass', `${path} parses; every setting is where it belongs`), loaded };
}

/** Where a top-level key was written inside a section instead (so it is not in force). */
function nestedKeyLine(loaded: LoadedForCheck, key: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(loaded.path, 'utf8');
  } catch {
    return undefined;
  }
  const lines = text.split(/\r?\n/);
  const first = lines.findIndex((l) => /^\s*\[/.test(l));
  if (first < 0) return undefined;
  const idx = lines.findIndex((l, i) => i > first && new RegExp(`^\\s*${key}\\s*=`).test(l));
  return idx >= 0 ? idx + 1 : undefined;
}

function checkHostnameSetting(loaded: LoadedForCheck): { check: CheckResult; hostname?: string; explicit: boolean } {
  const id = 'hostname';
  const title = 'hostname is valid (RFC 1035 name or IP address, under 64 characters)';
  const fix = "Set hostname at the top of config.toml (before any [section]) to an FQDN or IP address shorter than 64 characters: it is the CN of the gateway's server certificate and the name downstream devices dial";
  if (!loaded.raw) return { check: result(id, title, 'skipped', 'the config file could not be parsed'), explicit: false };
  const value = loaded.raw.hostname;
  const line = loaded.topLines.get('hostname');
  if (value === undefined) {
    const name = osHostname();
    const problem = checkHostname(name);
    const nested = nestedKeyLine(loaded, 'hostname');
    const why = nested ? `the hostname on line ${nested} is inside a section, so there is no top-level hostname` : 'no hostname is set';
    if (problem) return { check: result(id, title, 'error', `${why}; the gateway would use this machine's name "${name}", which ${problem}`, fix), explicit: false };
    return { check: result(id, title, 'warning', `${why}; the gateway uses this machine's name "${name}"`, fix), hostname: name, explicit: false };
  }
  if (typeof value !== 'string') return { check: result(id, title, 'error', `${lineText(line)}hostname must be a string`, 'Write hostname = "gateway.example.local"'), explicit: true };
  const problem = checkHostname(value);
  if (problem) return { check: result(id, title, 'error', `${lineText(line)}hostname "${value}" ${problem}`, fix), explicit: true };
  return { check: result(id, title, 'pass', `"${value}" (${isIpAddress(value) ? 'IP address' : 'DNS name'}, ${value.length} characters)`), hostname: value, explicit: true };
}

function checkParentHostname(loaded: LoadedForCheck): { check: CheckResult; parent?: string } {
  const id = 'parent-hostname';
  const title = 'parent_hostname is valid';
  if (!loaded.raw) return { check: result(id, title, 'skipped', 'the config file could not be parsed') };
  const value = loaded.raw.parent_hostname;
  const line = loaded.topLines.get('parent_hostname');
  const fix = "Set parent_hostname (at the top of config.toml) to the parent's hostname exactly as the parent's own config.toml sets it";
  if (value === undefined) {
    const nested = nestedKeyLine(loaded, 'parent_hostname');
    if (nested) return { check: result(id, title, 'error', `the parent_hostname on line ${nested} is inside a section, so this gateway would connect to the IoT hub instead of its parent`, 'Move it above the first [section]') };
    return { check: result(id, title, 'skipped', 'not set: this is a top-layer gateway; its upstream is the IoT hub') };
  }
  if (typeof value !== 'string') return { check: result(id, title, 'error', `${lineText(line)}parent_hostname must be a string`, fix) };
  const problem = checkHostname(value);
  if (problem) return { check: result(id, title, 'error', `${lineText(line)}parent_hostname "${value}" ${problem}`, fix) };
  return { check: result(id, title, 'pass', `"${value}" (${isIpAddress(value) ? 'IP address' : 'DNS name'})`), parent: value };
}

function checkHostnamePattern(hostname: string | undefined, explicit: boolean, parent: string | undefined): CheckResult {
  const id = 'hostname-pattern';
  const title = 'hostname and parent_hostname follow one pattern (both IP addresses or both names)';
  if (!hostname || !explicit || !parent) return result(id, title, 'skipped', 'needs both hostname and parent_hostname set and valid');
  if (isIpAddress(hostname) !== isIpAddress(parent)) {
    return result(
      id,
      title,
      'warning',
      `hostname "${hostname}" is ${isIpAddress(hostname) ? 'an IP address' : 'a name'} but parent_hostname "${parent}" is ${isIpAddress(parent) ? 'an IP address' : 'a name'}`,
      'Use one pattern across the whole hierarchy: FQDNs everywhere, or IP addresses everywhere',
    );
  }
  return result(id, title, 'pass', isIpAddress(hostname) ? 'both are IP addresses' : 'both are names');
}

function checkProvisioning(config: EdgeConfig): CheckResult {
  const id = 'provisioning';
  const title = 'edge device identity is provisioned';
  const p = config.provisioning;
  if (!p) {
    return result(id, title, 'error', '[provisioning] is missing: the gateway has no identity to connect upstream with', 'Add [provisioning] source = "manual" with connection_string = "HostName=...;DeviceId=...;SharedAccessKey=..." (from `strata device connection-string ID`)');
  }
  if (p.authentication?.method === 'x509') {
    return result(id, title, 'pass', `edge device "${p.deviceId}" at IoT hub ${p.iothubHostname} (X.509 certificate; the gateway reads its ${'$'}edgeHub key from its parent with it)`);
  }
  return result(id, title, 'pass', `edge device "${p.deviceId}" at IoT hub ${p.iothubHostname} (SAS key)`);
}

function checkTrustBundle(config: EdgeConfig, now: Date): { check: CheckResult; pems: string[] } {
  const id = 'trust-bundle';
  const title = 'trust bundle (trust_bundle_cert) is readable and in date';
  if (!config.trustBundleCert) {
    return {
      check: result(id, title, 'error', 'trust_bundle_cert is not set: the gateway cannot verify the certificate of its upstream (parent or hub)', 'Set trust_bundle_cert = "file:///.../azure-iot-test-only.root.ca.cert.pem" at the top of config.toml (before any [section]) to the root CA of the hierarchy'),
      pems: [],
    };
  }
  let pem: string;
  try {
    pem = readCertificateFile(config.trustBundleCert, 'trust_bundle_cert', 'Point trust_bundle_cert at the root CA of the hierarchy');
  } catch (err) {
    const m = userMessage(err);
    return { check: result(id, title, 'error', m.message, m.hint), pems: [] };
  }
  const pems = splitPemCertificates(pem);
  const states = pems.map((p) => {
    const c = new X509Certificate(p);
    return validity(c, now, `"${subjectOf(c)}"`);
  });
  const status = worst(...states.map((s) => s.status));
  const detail = `${config.trustBundleCert}: ${pems.length} certificate(s); ${states.map((s) => s.text).join('; ')}`;
  return { check: result(id, title, status, detail, status === 'pass' ? undefined : 'Renew the root CA and give every node of the hierarchy the new one'), pems };
}

interface EdgeCaState {
  /** The configured Edge CA chain (first = the Edge CA), when it is readable. */
  chainPems?: string[];
}

function checkEdgeCaPresent(config: EdgeConfig, dataDir: string | undefined, now: Date): CheckResult {
  const id = 'edge-ca';
  const title = 'Edge CA is configured ([edge_ca])';
  if (config.edgeCa) return result(id, title, 'pass', `cert ${config.edgeCa.cert}, key ${config.edgeCa.pk}`);
  let current = '';
  const quickstart = dataDir ? edgePkiPaths(dataDir).quickstartCaCert : undefined;
  if (quickstart && existsSync(quickstart)) {
    try {
      const c = new X509Certificate(readFileSync(quickstart));
      current = `; ${validity(c, now, `the current one (${quickstart})`).text}`;
    } catch {
      current = `; ${quickstart} is unreadable (the gateway makes a new one on start)`;
    }
  }
  return result(
    id,
    title,
    'warning',
    `no [edge_ca]: the gateway uses a quickstart Edge CA it generates itself (self-signed, valid ${QUICKSTART_CA_DAYS} days, renewed automatically); downstream devices must trust it directly${current}`,
    'For production, issue an Edge CA under the hierarchy\'s root CA (`strata certs create-edge-ca NAME`) and set [edge_ca] cert and pk; downstream devices then only need the root CA',
  );
}

function checkEdgeCaCertificate(config: EdgeConfig, now: Date, state: EdgeCaState): CheckResult {
  const id = 'edge-ca-cert';
  const title = 'Edge CA certificate is readable, a CA, in date, and matches its key';
  if (!config.edgeCa) return result(id, title, 'skipped', 'no [edge_ca] configured (quickstart Edge CA)');
  const { cert, pk } = config.edgeCa;
  let certPem: string;
  let keyPem: string;
  try {
    certPem = readCertificateFile(cert, 'edge_ca.cert');
    keyPem = readKeyFile(pk, 'edge_ca.pk');
  } catch (err) {
    const m = userMessage(err);
    return result(id, title, 'error', m.message, m.hint);
  }
  const chain = splitPemCertificates(certPem);
  state.chainPems = chain;
  const leaf = new X509Certificate(chain[0]);
  const problems: Array<{ status: 'warning' | 'error'; text: string; fix: string }> = [];
  if (!keyMatchesCertificate(keyPem, chain[0])) problems.push({ status: 'error', text: `edge_ca.pk ${pk} is not the key of ${cert}`, fix: 'Give the private key made together with that Edge CA certificate' });
  if (!isCa(parseCertificate(chain[0]))) problems.push({ status: 'error', text: `${cert} is not a CA certificate (basicConstraints CA:false), so it cannot issue the gateway's server certificate`, fix: 'Make an Edge CA with `strata certs create-edge-ca NAME` and use its -full-chain file' });
  const v = validity(leaf, now, `the Edge CA "${subjectOf(leaf)}"`);
  if (v.status !== 'pass') problems.push({ status: v.status, text: v.text, fix: 'Issue a new Edge CA (`strata certs create-edge-ca NAME`) and `strata edge config apply`: the gateway re-issues its server certificate without dropping connections' });
  try {
    const mode = statSync(pk).mode & 0o777;
    if (mode & 0o077) problems.push({ status: 'warning', text: `the Edge CA key ${pk} can be read by other users (mode ${mode.toString(8)})`, fix: `chmod 600 ${pk}` });
  } catch {
    /* readKeyFile already read it; a stat failure here changes nothing */
  }
  if (problems.length === 0) return result(id, title, 'pass', `${v.text}; its key matches`);
  return result(id, title, worst(...problems.map((p) => p.status)), problems.map((p) => p.text).join('; '), [...new Set(problems.map((p) => p.fix))].join('; '));
}

function checkEdgeCaChain(config: EdgeConfig, trustPems: string[], state: EdgeCaState, now: Date): CheckResult {
  const id = 'edge-ca-chain';
  const title = 'Edge CA chains to the trust bundle';
  if (!config.edgeCa) return result(id, title, 'skipped', 'the quickstart Edge CA is self-signed: downstream devices must trust it directly');
  if (!state.chainPems) return result(id, title, 'skipped', 'the Edge CA certificate is not readable (see above)');
  if (trustPems.length === 0) return result(id, title, 'skipped', 'the trust bundle is not readable (see above)');
  const [leaf, ...rest] = state.chainPems;
  const v = verifyChain({ certPem: leaf, trustPems, untrustedPems: rest, at: now });
  const path = v.chain.map((l) => `"${l.subject}"`).join(' -> ');
  if (v.ok) return result(id, title, 'pass', path);
  return result(
    id,
    title,
    'error',
    `${config.edgeCa.cert} does not chain to ${config.trustBundleCert}: ${v.reason}`,
    v.code === 'missing-intermediate' ? 'Use the Edge CA\'s -full-chain file (Edge CA followed by its intermediates)' : 'Use an Edge CA issued under the root CA in trust_bundle_cert (one root for the whole hierarchy)',
  );
}

function checkIdentityCert(config: EdgeConfig, now: Date): CheckResult {
  const id = 'identity-cert';
  const title = 'device identity certificate is readable, in date, and matches its key';
  const auth = config.provisioning?.authentication;
  if (auth?.method !== 'x509') return result(id, title, 'skipped', 'the edge device authenticates with a SAS key');
  let certPem: string;
  let keyPem: string;
  try {
    certPem = readCertificateFile(auth.identityCert, 'identity_cert');
    keyPem = readKeyFile(auth.identityPk, 'identity_pk');
  } catch (err) {
    const m = userMessage(err);
    return result(id, title, 'error', m.message, m.hint);
  }
  if (!keyMatchesCertificate(keyPem, certPem)) return result(id, title, 'error', `identity_pk ${auth.identityPk} is not the key of ${auth.identityCert}`, 'Give the key made together with the identity certificate');
  const v = validity(new X509Certificate(splitPemCertificates(certPem)[0]), now, 'the identity certificate');
  return result(id, title, v.status, v.text, v.status === 'pass' ? undefined : 'Issue a new identity certificate (`strata certs create-edge-identity NAME`)');
}

// ------------------------------------------------------------------------------------------
// The gateway's own server certificate

/** The server certificate chain the running gateway presents, as a downstream device sees it. */
async function servedChain(host: string, port: number, servername: string, timeoutMs: number): Promise<string[] | undefined> {
  return new Promise((resolveChain) => {
    const socket = tls.connect({ host, port, rejectUnauthorized: false, ...(isIP(servername) ? {} : { servername }) });
    const done = (v: string[] | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolveChain(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    socket.once('error', () => done(undefined));
    socket.once('secureConnect', () => done(peerChainPems(socket)));
  });
}

async function checkServerCertificate(hostname: string | undefined, config: EdgeConfig, dataDir: string | undefined, trustPems: string[], now: Date, timeoutMs: number): Promise<CheckResult> {
  const id = 'server-cert';
  const title = "gateway's server certificate names the hostname (CN and SAN)";
  if (!dataDir) return result(id, title, 'skipped', 'no data directory known (pass --data DIR)');
  if (!hostname) return result(id, title, 'skipped', 'no valid hostname to compare with');
  const file = edgePkiPaths(dataDir).serverCert;
  const pid = runningGatewayPid(dataDir);
  const state = pid !== undefined ? readGatewayState(dataDir) : undefined;
  let chain: string[] | undefined;
  let source = file;
  if (state) {
    chain = await servedChain(state.bind, state.ports.mqtt, hostname, timeoutMs);
    source = `served by the running gateway on ${state.bind}:${state.ports.mqtt}`;
  }
  if (!chain) {
    if (!existsSync(file)) return result(id, title, 'skipped', `the gateway has not run from ${dataDir} yet: it issues its server certificate (CN = hostname) on first start`);
    try {
      chain = splitPemCertificates(readFileSync(file, 'utf8'));
    } catch (err) {
      return result(id, title, 'error', `cannot read ${file}: ${(err as Error).message}`, 'Delete it; the gateway issues a new one on start');
    }
    source = file;
    if (chain.length === 0) return result(id, title, 'error', `${file} holds no certificate`, 'Delete it; the gateway issues a new one on start');
  }
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(chain[0]);
  } catch {
    return result(id, title, 'error', `the server certificate (${source}) is not a valid X.509 certificate`, 'Delete it; the gateway issues a new one on start');
  }
  const running = state !== undefined;
  const reissue = running
    ? 'Run `strata edge config apply --config FILE --data DIR`: the running gateway re-issues its server certificate for the configured hostname without dropping connections'
    : 'Start the gateway (`strata edge start`): it re-issues a server certificate for the configured hostname from the Edge CA; or delete the stale certificate';
  const problems: Array<{ status: 'warning' | 'error'; text: string; fix: string }> = [];
  const cn = commonNameOf(leaf);
  if (cn !== hostname) problems.push({ status: 'error', text: `its CN is "${cn ?? '(none)'}", not the hostname "${hostname}": downstream devices dialling ${hostname} will refuse it`, fix: reissue });
  const covers = isIP(hostname) ? leaf.checkIP(hostname) !== undefined : leaf.checkHost(hostname) !== undefined;
  if (!covers) problems.push({ status: 'error', text: `no subject alternative name matches "${hostname}" (SAN: ${namesOf(leaf)}): the devices' TLS check fails with a host name / IP address mismatch`, fix: reissue });
  if (leaf.checkHost(EDGEHUB_SAN) === undefined) problems.push({ status: 'warning', text: `it lacks the DNS name "${EDGEHUB_SAN}" in its SAN (modules dial the edge hub by that name)`, fix: reissue });
  const v = validity(leaf, now, 'the server certificate');
  if (v.status !== 'pass' && !(v.status === 'warning' && running)) problems.push({ status: v.status, text: v.text, fix: reissue });
  if (config.edgeCa && trustPems.length > 0) {
    const chained: VerifyResult = verifyChain({ certPem: chain[0], trustPems, untrustedPems: chain.slice(1), at: now });
    if (!chained.ok && chained.code !== 'expired' && chained.code !== 'not-yet-valid') {
      problems.push({ status: 'error', text: `it does not chain to the trust bundle: ${chained.reason}`, fix: reissue });
    }
  }
  const seen = `${source}: CN "${cn ?? ''}", SAN ${namesOf(leaf)}`;
  if (problems.length === 0) return result(id, title, 'pass', `${seen}; ${v.text}`);
  return result(id, title, worst(...problems.map((p) => p.status)), `${seen}; ${problems.map((p) => p.text).join('; ')}`, [...new Set(problems.map((p) => p.fix))].join('; '));
}

// ------------------------------------------------------------------------------------------
// Upstream connectivity

function derToPem(der: Buffer): string {
  return `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
}

function peerChainPems(socket: tls.TLSSocket): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  let c: tls.DetailedPeerCertificate | undefined = socket.getPeerCertificate(true) as tls.DetailedPeerCertificate;
  while (c && c.raw && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    out.push(derToPem(c.raw));
    c = c.issuerCertificate;
  }
  return out;
}

export type ProbeOutcome =
  | { kind: 'ok'; leaf: X509Certificate; chainText: string }
  | { kind: 'unreachable' | 'refused' | 'timeout' | 'tls-failed' | 'not-trusted' | 'out-of-date' | 'name-mismatch' | 'unverified'; message: string; leaf?: X509Certificate };

const UNREACHABLE_CODES = new Set(['EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'EADDRNOTAVAIL']);
const UNRESOLVED_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_NONAME', 'EAI_FAIL']);
const OUT_OF_DATE_CODES = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID']);

function presented(chain: string[]): string {
  return chain
    .map((p) => {
      const c = new X509Certificate(p);
      return `"${subjectOf(c)}" (issued by "${c.issuer.replace(/\n/g, ', ')}")`;
    })
    .join(' -> ');
}

/**
 * Opens TLS to host:port the way the gateway's upstream link does and says exactly what went
 * wrong: the chain is verified against the trust bundle and the name against `host`. The
 * handshake itself accepts anything so a rejected certificate can still be described.
 */
export function probeUpstream(host: string, port: number, trustPems: string[], timeoutMs = CONNECT_TIMEOUT_MS, now = new Date()): Promise<ProbeOutcome> {
  const where = `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
  return new Promise((resolveProbe) => {
    let tcpConnected = false;
    const socket = tls.connect({
      host,
      port,
      ...(isIP(host) ? {} : { servername: host }),
      ...(trustPems.length > 0 ? { ca: trustPems } : {}),
      rejectUnauthorized: false,
      // The name is checked below, apart from the chain, so the two failures are told apart.
      checkServerIdentity: () => undefined,
    });
    const finish = (o: ProbeOutcome) => {
      clearTimeout(timer);
      socket.destroy();
      resolveProbe(o);
    };
    const timer = setTimeout(() => {
      finish(
        tcpConnected
          ? { kind: 'timeout', message: `timeout: ${where} accepted the connection but did not complete a TLS handshake within ${timeoutMs} ms (is TLS served on this port?)` }
          : { kind: 'timeout', message: `timeout: no answer from ${where} within ${timeoutMs} ms (a firewall dropping the traffic, or a host that is down)` },
      );
    }, timeoutMs);
    socket.once('connect', () => {
      tcpConnected = true;
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? '';
      if (code === 'ECONNREFUSED') return finish({ kind: 'refused', message: `connection refused: nothing listens on ${where}` });
      if (UNRESOLVED_CODES.has(code)) return finish({ kind: 'unreachable', message: `unreachable: the name "${host}" does not resolve (${code})` });
      if (UNREACHABLE_CODES.has(code)) return finish({ kind: 'unreachable', message: `unreachable: no route to ${where} (${code})` });
      if (code === 'ETIMEDOUT') return finish({ kind: 'timeout', message: `timeout: no answer from ${where} (${code})` });
      finish({ kind: 'tls-failed', message: `TLS handshake with ${where} failed${tcpConnected ? '' : ' before it started'}: ${err.message}` });
    });
    socket.once('secureConnect', () => {
      const chain = peerChainPems(socket);
      if (chain.length === 0) return finish({ kind: 'tls-failed', message: `${where} presented no certificate` });
      const leaf = new X509Certificate(chain[0]);
      const chainText = presented(chain);
      if (trustPems.length === 0) return finish({ kind: 'unverified', message: `TLS handshake with ${where} done, but its certificate could not be verified: no readable trust bundle`, leaf });
      if (!socket.authorized) {
        const code = String((socket.authorizationError as unknown as { code?: string })?.code ?? socket.authorizationError ?? '');
        let reason = code;
        try {
          const v = verifyChain({ certPem: chain[0], trustPems, untrustedPems: chain.slice(1), at: now });
          if (!v.ok && v.reason) reason = `${v.reason} (${code})`;
        } catch {
          /* keep the TLS library's code */
        }
        if (OUT_OF_DATE_CODES.has(code)) return finish({ kind: 'out-of-date', message: `certificate out of date: ${where} presented ${chainText}; ${reason}`, leaf });
        return finish({ kind: 'not-trusted', message: `certificate not trusted (trust bundle does not match the parent): ${where} presented ${chainText}; ${reason}`, leaf });
      }
      const peer = socket.getPeerCertificate();
      const nameProblem = tls.checkServerIdentity(host, peer);
      if (nameProblem) {
        return finish({ kind: 'name-mismatch', message: `host name mismatch: the certificate of ${where} (CN "${commonNameOf(leaf) ?? ''}", SAN ${namesOf(leaf)}) is not valid for "${host}"`, leaf });
      }
      finish({ kind: 'ok', leaf, chainText });
    });
  });
}

const PROBE_FIXES: Record<Exclude<ProbeOutcome['kind'], 'ok'>, (o: { host: string; port: number; isParent: boolean }) => string> = {
  refused: (o) => (o.isParent ? `Start the parent gateway (\`strata edge start\` on ${o.host}) and check that parent_hostname is its address` : `Start the hub (\`strata hub start\`) and check the HostName of the provisioning connection string`) + `; port ${o.port} must be open`,
  unreachable: (o) => `Check ${o.isParent ? 'parent_hostname' : 'the hub host name'} (DNS / /etc/hosts), the network path and any firewall between this device and ${o.host}`,
  timeout: (o) => `Check that ${o.host} is up and that no firewall drops outbound traffic to port ${o.port}`,
  'tls-failed': (o) => `Check that ${o.host}:${o.port} is the ${o.isParent ? 'parent gateway' : 'hub'} and serves TLS there`,
  'not-trusted': (o) => `Set trust_bundle_cert to the root CA that issued the ${o.isParent ? "parent's" : "hub's"} certificate chain (one root for the whole hierarchy), or give the ${o.isParent ? 'parent an Edge CA' : 'hub a certificate'} issued under this trust bundle`,
  'out-of-date': (o) => `Check this host's clock (see the clock check); if it is right, renew the certificate of ${o.host}`,
  'name-mismatch': (o) =>
    o.isParent ? "Set parent_hostname to exactly the hostname in the parent's config.toml (its certificate's CN), or fix the parent's hostname and `strata edge config apply` there" : 'Use the host name the hub\'s certificate was issued for in the provisioning connection string',
  unverified: () => 'Fix trust_bundle_cert (see the trust bundle check)',
};

function upstreamResult(p: { port: number; protocol: string }, host: string, isParent: boolean, outcome: ProbeOutcome): CheckResult {
  const id = `upstream-${p.port}`;
  const title = `${isParent ? 'parent' : 'IoT hub'} ${host} answers on ${p.port} (${p.protocol}) with a trusted TLS certificate for its name`;
  if (outcome.kind === 'ok') return result(id, title, 'pass', `TLS handshake verified: ${outcome.chainText} chains to the trust bundle and names ${host}`);
  const status = outcome.kind === 'unverified' ? 'warning' : 'error';
  return result(id, title, status, outcome.message, PROBE_FIXES[outcome.kind]({ host, port: p.port, isParent }));
}

/** The upstream's clock as its HTTP Date header says (second resolution), with the local time at the moment it was read. */
function fetchUpstreamDate(host: string, timeoutMs: number): Promise<{ remote: Date; local: number } | undefined> {
  return new Promise((resolveDate) => {
    const started = Date.now();
    // Only the time is read, nothing is sent: the certificate is judged by the connectivity checks.
    const req = https.request({ host, port: 443, method: 'HEAD', path: '/', agent: false, rejectUnauthorized: false, ...(isIP(host) ? {} : { servername: host }) }, (res) => {
      const local = (started + Date.now()) / 2;
      const header = res.headers.date;
      res.resume();
      done(header && !Number.isNaN(Date.parse(header)) ? { remote: new Date(header), local } : undefined);
    });
    const done = (v: { remote: Date; local: number } | undefined) => {
      clearTimeout(timer);
      req.destroy();
      resolveDate(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    req.once('error', () => done(undefined));
    req.end();
  });
}

function formatSkew(ms: number): string {
  const s = Math.abs(ms) / 1000;
  return s >= 120 ? `${Math.round(s / 60)} minutes` : `${Math.round(s)} s`;
}

function checkClock(host: string | undefined, date: { remote: Date; local: number } | undefined, leaves: X509Certificate[]): CheckResult {
  const id = 'clock';
  const title = 'host clock agrees with the upstream (within 5 minutes)';
  const fix = 'Set the clock right (enable NTP: `timedatectl set-ntp true`); certificates and SAS tokens are judged by it';
  if (!host) return result(id, title, 'skipped', 'no upstream to compare with');
  if (date) {
    const skew = date.remote.getTime() - date.local;
    // The Date header has whole seconds: up to a second of difference is noise.
    const text = `the clock of ${host} reads ${iso(date.remote)}`;
    if (Math.abs(skew) > CLOCK_SKEW_LIMIT_MS) return result(id, title, 'warning', `${text}; this host's clock is ${formatSkew(skew)} ${skew > 0 ? 'behind' : 'ahead'}`, fix);
    return result(id, title, 'pass', `${text}; within ${formatSkew(Math.max(0, Math.abs(skew) - 1000))} of this host`);
  }
  const now = new Date();
  for (const leaf of leaves) {
    const from = new Date(leaf.validFrom);
    const to = new Date(leaf.validTo);
    if (now < from) return result(id, title, 'warning', `the certificate of ${host} is not valid before ${iso(from)}, but this host's clock reads ${iso(now)}: the clock is probably behind`, fix);
    if (now > to) return result(id, title, 'warning', `the certificate of ${host} expired on ${iso(to)} by this host's clock (${iso(now)}): the clock may be ahead, or the certificate old`, fix);
  }
  if (leaves.length > 0) return result(id, title, 'pass', `no Date header from ${host}; this host's time lies within the validity of its certificate`);
  return result(id, title, 'skipped', `could not reach ${host} to compare clocks`);
}

// ------------------------------------------------------------------------------------------
// Storage

/** The file system type and mount point holding `path` (Linux; undefined elsewhere). */
function mountOf(path: string): { mountPoint: string; type: string } | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/self/mounts', 'utf8');
  } catch {
    return undefined;
  }
  let best: { mountPoint: string; type: string } | undefined;
  for (const line of text.split('\n')) {
    const [, mp, type] = line.split(' ');
    if (!mp || !type) continue;
    const mountPoint = mp.replace(/\\040/g, ' ');
    const inside = path === mountPoint || path.startsWith(mountPoint.endsWith(sep) ? mountPoint : `${mountPoint}${sep}`);
    if (inside && (!best || mountPoint.length >= best.mountPoint.length)) best = { mountPoint, type };
  }
  return best;
}

const VOLATILE_FS = new Set(['tmpfs', 'ramfs']);

function under(path: string, dir: string): boolean {
  const d = resolve(dir);
  return path === d || path.startsWith(`${d}${sep}`);
}

/**
 * The data directory's disk has more free space than the store's reserve: under it, the running
 * gateway refuses new messages ("store full").
 */
export function checkStorage(
  dataDir: string | undefined,
  how: string,
  disk: { reserveBytes: number; setting: string } = { reserveBytes: DEFAULT_DISK_RESERVE_BYTES, setting: '[strata] disk_reserve_mb' },
  runningStoreFull?: string,
): CheckResult {
  const id = 'storage';
  const title = 'data directory is writable, on persistent storage, with free space above the reserve';
  if (!dataDir) return result(id, title, 'skipped', 'no data directory known: the config has no device id', 'Pass --data DIR');
  const fix = `Give the gateway a data directory on persistent storage: \`strata edge start --data /var/lib/strata/edge-ID\` (and the same --data here)`;
  let existing = dataDir;
  while (!existsSync(existing) && dirname(existing) !== existing) existing = dirname(existing);
  let st;
  try {
    st = statSync(existing);
  } catch (err) {
    return result(id, title, 'error', `cannot look at ${existing}: ${(err as Error).message}`, fix);
  }
  if (!st.isDirectory()) return result(id, title, 'error', `${existing} is not a directory`, fix);
  const probe = join(existing, `.strata-check-${process.pid}`);
  try {
    writeFileSync(probe, 'x');
    rmSync(probe, { force: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'EROFS' ? 'the file system is read-only' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : (err as Error).message;
    if (isDiskFull(err)) return storeFull(id, title, existing, 0, disk);
    return result(id, title, 'error', `cannot write in ${existing}: ${why}`, `Make ${existing} writable by the gateway's user, or pass another --data`);
  }
  let free: number | undefined;
  try {
    free = statfsFree(existing);
  } catch {
    // not measurable here: the other findings stand
  }
  if (runningStoreFull) return result(id, title, 'error', `the running gateway says: ${runningStoreFull}`, STORE_FULL_FIX);
  if (free !== undefined && free < disk.reserveBytes) return storeFull(id, title, existing, free, disk);
  const where = `${dataDir}${how ? ` (${how})` : ''}`;
  const state = existing === dataDir ? 'is writable' : `does not exist yet; the gateway creates it on first start (${existing} is writable)`;
  const mount = mountOf(existing);
  const temp = [tmpdir(), '/tmp', '/dev/shm', '/run'].find((d) => under(dataDir, d));
  if (temp || (mount && VOLATILE_FS.has(mount.type))) {
    const why = [temp ? `it is under ${resolve(temp)}` : '', mount && VOLATILE_FS.has(mount.type) ? `it is on ${mount.type} (${mount.mountPoint}), kept in memory` : ''].filter(Boolean).join(' and ');
    return result(id, title, 'warning', `${where} ${state}, but ${why}: the message store, identity cache and certificates may be lost on reboot`, fix);
  }
  return result(id, title, 'pass', `${where} ${state}${mount ? `, on ${mount.type} (${mount.mountPoint})` : ''}`);
}

function storeFull(id: string, title: string, dir: string, free: number, disk: { reserveBytes: number; setting: string }): CheckResult {
  return result(
    id,
    title,
    'error',
    `store full: the disk holding ${dir} has ${mib(free)} free, under the reserve of ${mib(disk.reserveBytes)} (${disk.setting}): the gateway refuses new messages`,
    STORE_FULL_FIX,
  );
}

const STORE_FULL_FIX = 'Free space on that disk (or give the gateway a larger one with --data); queued messages keep draining upstream';

/**
 * What the gateway running from `dataDir` says of its store (its /health): the reason it is
 * full, or undefined (not full, not running, not answering).
 */
function runningStoreFull(dataDir: string | undefined, timeoutMs: number): Promise<string | undefined> {
  const state = dataDir !== undefined && runningGatewayPid(dataDir) !== undefined ? readGatewayState(dataDir) : undefined;
  if (!state) return Promise.resolve(undefined);
  return new Promise((done) => {
    // Our own process on this host, asked for nothing secret: its certificate is checked elsewhere (server-cert).
    const req = https.get({ host: state.bind, port: state.ports.https, path: '/health', rejectUnauthorized: false, timeout: timeoutMs }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => {
        try {
          const full = (JSON.parse(text) as { storeFull?: unknown }).storeFull;
          done(typeof full === 'string' ? full : undefined);
        } catch {
          done(undefined);
        }
      });
      res.on('error', () => done(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => done(undefined));
  });
}

// ------------------------------------------------------------------------------------------

function skippedAll(ids: Array<[string, string]>, why: string): CheckResult[] {
  return ids.map(([id, title]) => result(id, title, 'skipped', `cannot check: ${why}`));
}

const CONFIG_DEPENDENT: Array<[string, string]> = [
  ['provisioning', 'edge device identity is provisioned'],
  ['trust-bundle', 'trust bundle (trust_bundle_cert) is readable and in date'],
  ['edge-ca', 'Edge CA is configured ([edge_ca])'],
  ['edge-ca-cert', 'Edge CA certificate is readable, a CA, in date, and matches its key'],
  ['edge-ca-chain', 'Edge CA chains to the trust bundle'],
  ['identity-cert', 'device identity certificate is readable, in date, and matches its key'],
];

/** The reserve the gateway keeps free, as it reads it (a bad value is the config check's to report). */
function diskReserve(config: EdgeConfig | undefined): { reserveBytes: number; setting: string } {
  const setting = '[strata] disk_reserve_mb';
  try {
    const v = config?.settings.disk_reserve_mb ?? process.env.STRATA_DISK_RESERVE_MB;
    if (v !== undefined && v !== '') return { reserveBytes: reserveBytesOf(v, setting), setting };
  } catch {
    // the default then
  }
  return { reserveBytes: DEFAULT_DISK_RESERVE_BYTES, setting };
}

/**
 * Everything `strata edge check` looks at, in the order it prints them. Never throws for a bad
 * configuration or an unreachable upstream: each problem is a result with what to do about it.
 */
export async function runEdgeChecks(o: EdgeCheckOptions): Promise<CheckResult[]> {
  const now = o.now ?? new Date();
  const timeoutMs = o.timeoutMs ?? CONNECT_TIMEOUT_MS;
  const out: CheckResult[] = [];
  const guard = async (id: string, title: string, fn: () => CheckResult | Promise<CheckResult>): Promise<CheckResult> => {
    try {
      return await fn();
    } catch (err) {
      log.error({ err, check: id }, 'a check failed unexpectedly');
      const m = userMessage(err);
      return result(id, title, 'error', `the check itself failed: ${m.message}`, m.hint);
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
    out.push(await guard('provisioning', 'edge device identity is provisioned', () => checkProvisioning(config)));
    const trust = checkTrustBundle(config, now);
    trustPems = trust.pems;
    out.push(trust.check);
    const caState: EdgeCaState = {};
    out.push(await guard('edge-ca', 'Edge CA is configured ([edge_ca])', () => checkEdgeCaPresent(config, dataDir, now)));
    out.push(await guard('edge-ca-cert', 'Edge CA certificate is readable, a CA, in date, and matches its key', () => checkEdgeCaCertificate(config, now, caState)));
    out.push(await guard('edge-ca-chain', 'Edge CA chains to the trust bundle', () => checkEdgeCaChain(config, trustPems, caState, now)));
    out.push(await guard('identity-cert', 'device identity certificate is readable, in date, and matches its key', () => checkIdentityCert(config, now)));
  } else {
    out.push(...skippedAll(CONFIG_DEPENDENT, loaded.refusedBecause ?? 'the config file was refused'));
  }

  const serverTitle = "gateway's server certificate names the hostname (CN and SAN)";
  if (config) out.push(await guard('server-cert', serverTitle, () => checkServerCertificate(host.hostname, config, dataDir, trustPems, now, timeoutMs)));
  else out.push(result('server-cert', serverTitle, 'skipped', `cannot check: ${loaded.refusedBecause ?? 'the config file was refused'}`));

  // The validated values, not the config's: a refused parent_hostname was replaced by a stand-in there.
  const parentRefused = parent.check.status === 'error';
  const upstreamHost = !config || parentRefused ? undefined : (parent.parent ?? config.provisioning?.iothubHostname);
  const isParent = parent.parent !== undefined;
  if (upstreamHost) {
    const [date, ...outcomes] = await Promise.all([fetchUpstreamDate(upstreamHost, timeoutMs), ...UPSTREAM_PORTS.map((p) => probeUpstream(upstreamHost, p.port, trustPems, timeoutMs, now))]);
    const leaves = outcomes.flatMap((x) => (x.leaf ? [x.leaf] : []));
    out.push(checkClock(upstreamHost, date, leaves));
    out.push(checkStorage(dataDir, dataDirHow, diskReserve(config), await runningStoreFull(dataDir, timeoutMs)));
    UPSTREAM_PORTS.forEach((p, i) => out.push(upstreamResult(p, upstreamHost, isParent, outcomes[i])));
  } else {
    const why = parentRefused ? 'parent_hostname is refused (see above)' : config ? 'no upstream: neither parent_hostname nor a provisioned IoT hub host name is set' : loaded.refusedBecause ?? 'the config file was refused';
    out.push(result('clock', 'host clock agrees with the upstream (within 5 minutes)', 'skipped', `cannot check: ${why}`));
    out.push(checkStorage(dataDir, dataDirHow, diskReserve(config), await runningStoreFull(dataDir, timeoutMs)));
    for (const p of UPSTREAM_PORTS) out.push(result(`upstream-${p.port}`, `upstream answers on ${p.port} (${p.protocol}) with a trusted TLS certificate for its name`, 'skipped', `cannot check: ${why}`));
  }
  for (const r of out) if (r.status === 'error' || r.status === 'warning') log.debug({ check: r.id, status: r.status, detail: r.detail }, 'edge check finding');
  return out;
}
