/** The upstream group: TLS to the parent (or hub) on each port, verified as the upstream link does. */
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import tls from 'node:tls';
import { verifyChain } from '../../pki/index.ts';
import { result, upstreamTitle, type CheckResult, type UpstreamPort } from './checks.ts';
import { commonNameOf, namesOf, subjectOf } from './describe.ts';
import { peerChainPems } from './tls-peer.ts';

export const CONNECT_TIMEOUT_MS = 2000;

export type ProbeOutcome =
  | { kind: 'ok'; leaf: X509Certificate; chainText: string }
  | {
      kind:
        | 'unreachable'
        | 'refused'
        | 'timeout'
        | 'tls-failed'
        | 'not-trusted'
        | 'out-of-date'
        | 'name-mismatch'
        | 'unverified';
      message: string;
      leaf?: X509Certificate;
    };

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
export function probeUpstream(
  host: string,
  port: number,
  trustPems: string[],
  timeoutMs = CONNECT_TIMEOUT_MS,
  now = new Date(),
): Promise<ProbeOutcome> {
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
    let handshakeDone = false;
    const finish = (o: ProbeOutcome) => {
      clearTimeout(timer);
      // After a handshake, close politely: cut at once, the parent logs a handshake that failed.
      if (handshakeDone) {
        socket.end();
        setTimeout(() => socket.destroy(), 1000).unref();
      } else socket.destroy();
      resolveProbe(o);
    };
    const timer = setTimeout(() => {
      finish(
        tcpConnected
          ? {
              kind: 'timeout',
              message: `timeout: ${where} accepted the connection but did not complete a TLS handshake within ${timeoutMs} ms (is TLS served on this port?)`,
            }
          : {
              kind: 'timeout',
              message: `timeout: no answer from ${where} within ${timeoutMs} ms (a firewall dropping the traffic, or a host that is down)`,
            },
      );
    }, timeoutMs);
    socket.once('connect', () => {
      tcpConnected = true;
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? '';
      if (code === 'ECONNREFUSED')
        return finish({ kind: 'refused', message: `connection refused: nothing listens on ${where}` });
      if (UNRESOLVED_CODES.has(code))
        return finish({ kind: 'unreachable', message: `unreachable: the name "${host}" does not resolve (${code})` });
      if (UNREACHABLE_CODES.has(code))
        return finish({ kind: 'unreachable', message: `unreachable: no route to ${where} (${code})` });
      if (code === 'ETIMEDOUT')
        return finish({ kind: 'timeout', message: `timeout: no answer from ${where} (${code})` });
      finish({
        kind: 'tls-failed',
        message: `TLS handshake with ${where} failed${tcpConnected ? '' : ' before it started'}: ${err.message}`,
      });
    });
    socket.once('secureConnect', () => {
      handshakeDone = true;
      const chain = peerChainPems(socket);
      if (chain.length === 0) return finish({ kind: 'tls-failed', message: `${where} presented no certificate` });
      const leaf = new X509Certificate(chain[0]);
      const chainText = presented(chain);
      if (trustPems.length === 0)
        return finish({
          kind: 'unverified',
          message: `TLS handshake with ${where} done, but its certificate could not be verified: no readable trust bundle`,
          leaf,
        });
      if (!socket.authorized) {
        const code = String(
          (socket.authorizationError as unknown as { code?: string })?.code ?? socket.authorizationError ?? '',
        );
        let reason = code;
        try {
          const v = verifyChain({ certPem: chain[0], trustPems, untrustedPems: chain.slice(1), at: now });
          if (!v.ok && v.reason) reason = `${v.reason} (${code})`;
        } catch {
          /* keep the TLS library's code */
        }
        if (OUT_OF_DATE_CODES.has(code))
          return finish({
            kind: 'out-of-date',
            message: `certificate out of date: ${where} presented ${chainText}; ${reason}`,
            leaf,
          });
        return finish({
          kind: 'not-trusted',
          message: `certificate not trusted (trust bundle does not match the parent): ${where} presented ${chainText}; ${reason}`,
          leaf,
        });
      }
      const peer = socket.getPeerCertificate();
      const nameProblem = tls.checkServerIdentity(host, peer);
      if (nameProblem) {
        return finish({
          kind: 'name-mismatch',
          message: `host name mismatch: the certificate of ${where} (CN "${commonNameOf(leaf) ?? ''}", SAN ${namesOf(leaf)}) is not valid for "${host}"`,
          leaf,
        });
      }
      finish({ kind: 'ok', leaf, chainText });
    });
  });
}

const PROBE_FIXES: Record<
  Exclude<ProbeOutcome['kind'], 'ok'>,
  (o: { host: string; port: number; isParent: boolean }) => string
> = {
  refused: (o) =>
    (o.isParent
      ? `Start the parent gateway (\`strata edge start\` on ${o.host}) and check that parent_hostname is its address`
      : `Start the hub (\`strata hub start\`) and check the HostName of the provisioning connection string`) +
    `; port ${o.port} must be open`,
  unreachable: (o) =>
    `Check ${o.isParent ? 'parent_hostname' : 'the hub host name'} (DNS / /etc/hosts), the network path and any firewall between this device and ${o.host}`,
  timeout: (o) => `Check that ${o.host} is up and that no firewall drops outbound traffic to port ${o.port}`,
  'tls-failed': (o) =>
    `Check that ${o.host}:${o.port} is the ${o.isParent ? 'parent gateway' : 'hub'} and serves TLS there`,
  'not-trusted': (o) =>
    `Set trust_bundle_cert to the root CA that issued the ${o.isParent ? "parent's" : "hub's"} certificate chain (one root for the whole hierarchy), or give the ${o.isParent ? 'parent an Edge CA' : 'hub a certificate'} issued under this trust bundle`,
  'out-of-date': (o) =>
    `Check this host's clock (see the clock check); if it is right, renew the certificate of ${o.host}`,
  'name-mismatch': (o) =>
    o.isParent
      ? "Set parent_hostname to exactly the hostname in the parent's config.toml (its certificate's CN), or fix the parent's hostname and `strata edge config apply` there"
      : "Use the host name the hub's certificate was issued for in the provisioning connection string",
  unverified: () => 'Fix trust_bundle_cert (see the trust bundle check)',
};

/** `port` is where the probe went when it is not the standard one (HTTPS moved by parent_https_port); the id stays. */
export function upstreamResult(
  p: UpstreamPort,
  host: string,
  isParent: boolean,
  outcome: ProbeOutcome,
  port: number = p.port,
): CheckResult {
  const id = `upstream-${p.port}` as const;
  const title = upstreamTitle({ ...p, port }, `${isParent ? 'parent' : 'IoT hub'} ${host}`);
  if (outcome.kind === 'ok')
    return result(
      id,
      'pass',
      `TLS handshake verified: ${outcome.chainText} chains to the trust bundle and names ${host}`,
      undefined,
      title,
    );
  const status = outcome.kind === 'unverified' ? 'warning' : 'error';
  return result(id, status, outcome.message, PROBE_FIXES[outcome.kind]({ host, port, isParent }), title);
}
