/** The gateway's own server certificate: as the running gateway serves it, else as it lies on disk. */
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import tls from 'node:tls';
import { splitPemCertificates, verifyChain, type VerifyResult } from '../../pki/index.ts';
import type { EdgeConfig } from '../config.ts';
import { readGatewayState, runningGatewayPid } from '../local.ts';
import { EDGEHUB_SAN, edgePkiPaths } from '../security-manager.ts';
import { result, type CheckResult } from './checks.ts';
import { commonNameOf, namesOf, validity, worst } from './describe.ts';
import { peerChainPems } from './tls-peer.ts';

/** The server certificate chain the running gateway presents, as a downstream device sees it. */
async function servedChain(
  host: string,
  port: number,
  servername: string,
  timeoutMs: number,
): Promise<string[] | undefined> {
  return new Promise((resolveChain) => {
    const socket = tls.connect({ host, port, rejectUnauthorized: false, ...(isIP(servername) ? {} : { servername }) });
    const done = (v: string[] | undefined, handshakeDone = false) => {
      clearTimeout(timer);
      // After a handshake, close politely: cut at once, the gateway logs a handshake that failed.
      if (handshakeDone) {
        socket.end();
        setTimeout(() => socket.destroy(), 1000).unref();
      } else socket.destroy();
      resolveChain(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    socket.once('error', () => done(undefined));
    socket.once('secureConnect', () => done(peerChainPems(socket), true));
  });
}

export async function checkServerCertificate(
  hostname: string | undefined,
  config: EdgeConfig,
  dataDir: string | undefined,
  trustPems: string[],
  now: Date,
  timeoutMs: number,
): Promise<CheckResult> {
  const id = 'server-cert';
  if (!dataDir) return result(id, 'skipped', 'no data directory known (pass --data DIR)');
  if (!hostname) return result(id, 'skipped', 'no valid hostname to compare with');
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
    if (!existsSync(file))
      return result(
        id,
        'skipped',
        `the gateway has not run from ${dataDir} yet: it issues its server certificate (CN = hostname) on first start`,
      );
    try {
      chain = splitPemCertificates(readFileSync(file, 'utf8'));
    } catch (err) {
      return result(
        id,
        'error',
        `cannot read ${file}: ${(err as Error).message}`,
        'Delete it; the gateway issues a new one on start',
      );
    }
    source = file;
    if (chain.length === 0)
      return result(id, 'error', `${file} holds no certificate`, 'Delete it; the gateway issues a new one on start');
  }
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(chain[0]);
  } catch {
    return result(
      id,
      'error',
      `the server certificate (${source}) is not a valid X.509 certificate`,
      'Delete it; the gateway issues a new one on start',
    );
  }
  const running = state !== undefined;
  const reissue = running
    ? 'Run `strata edge config apply --config FILE --data DIR`: the running gateway re-issues its server certificate for the configured hostname without dropping connections'
    : 'Start the gateway (`strata edge start`): it re-issues a server certificate for the configured hostname from the Edge CA; or delete the stale certificate';
  const problems: Array<{ status: 'warning' | 'error'; text: string; fix: string }> = [];
  const cn = commonNameOf(leaf);
  if (cn !== hostname)
    problems.push({
      status: 'error',
      text: `its CN is "${cn ?? '(none)'}", not the hostname "${hostname}": downstream devices dialling ${hostname} will refuse it`,
      fix: reissue,
    });
  const covers = isIP(hostname) ? leaf.checkIP(hostname) !== undefined : leaf.checkHost(hostname) !== undefined;
  if (!covers)
    problems.push({
      status: 'error',
      text: `no subject alternative name matches "${hostname}" (SAN: ${namesOf(leaf)}): the devices' TLS check fails with a host name / IP address mismatch`,
      fix: reissue,
    });
  if (leaf.checkHost(EDGEHUB_SAN) === undefined)
    problems.push({
      status: 'warning',
      text: `it lacks the DNS name "${EDGEHUB_SAN}" in its SAN (modules dial the edge hub by that name)`,
      fix: reissue,
    });
  const v = validity(leaf, now, 'the server certificate');
  if (v.status !== 'pass' && !(v.status === 'warning' && running))
    problems.push({ status: v.status, text: v.text, fix: reissue });
  if (config.edgeCa && trustPems.length > 0) {
    const chained: VerifyResult = verifyChain({ certPem: chain[0], trustPems, untrustedPems: chain.slice(1), at: now });
    if (!chained.ok && chained.code !== 'expired' && chained.code !== 'not-yet-valid') {
      problems.push({
        status: 'error',
        text: `it does not chain to the trust bundle: ${chained.reason}`,
        fix: reissue,
      });
    }
  }
  const seen = `${source}: CN "${cn ?? ''}", SAN ${namesOf(leaf)}`;
  if (problems.length === 0) return result(id, 'pass', `${seen}; ${v.text}`);
  return result(
    id,
    worst(...problems.map((p) => p.status)),
    `${seen}; ${problems.map((p) => p.text).join('; ')}`,
    [...new Set(problems.map((p) => p.fix))].join('; '),
  );
}
