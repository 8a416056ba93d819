/**
 * Every check `strata edge check` runs, in the order it prints them: the one place their ids and
 * titles are written. The checks, the runner's skipped results and the CLI all read them here.
 */

export type CheckStatus = 'pass' | 'warning' | 'error' | 'skipped';

/** The outcome of one check: what was checked, how it went, what was seen, and what to do when it failed. */
export interface CheckResult {
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

/** The ports a gateway's upstream must answer on, as the original checks them. */
export const UPSTREAM_PORTS = [
  { port: 8883, protocol: 'MQTT' },
  { port: 5671, protocol: 'AMQP' },
  { port: 443, protocol: 'HTTPS / WebSockets' },
] as const;

export type UpstreamPort = (typeof UPSTREAM_PORTS)[number];

/** An upstream port's title; `who` names the upstream once it is known ("parent gw1.example"). */
export function upstreamTitle(p: { port: number; protocol: string }, who = 'upstream'): string {
  return `${who} answers on ${p.port} (${p.protocol}) with a trusted TLS certificate for its name`;
}

const CHECKS = [
  { id: 'config-file', group: 'configuration', title: 'config file is readable and well-formed' },
  { id: 'hostname', group: 'hostnames', title: 'hostname is valid (RFC 1035 name or IP address, under 64 characters)' },
  { id: 'parent-hostname', group: 'hostnames', title: 'parent_hostname is valid' },
  {
    id: 'hostname-pattern',
    group: 'hostnames',
    title: 'hostname and parent_hostname follow one pattern (both IP addresses or both names)',
  },
  { id: 'provisioning', group: 'configuration', title: 'edge device identity is provisioned' },
  { id: 'trust-bundle', group: 'certificates', title: 'trust bundle (trust_bundle_cert) is readable and in date' },
  { id: 'edge-ca', group: 'certificates', title: 'Edge CA is configured ([edge_ca])' },
  {
    id: 'edge-ca-cert',
    group: 'certificates',
    title: 'Edge CA certificate is readable, a CA, in date, and matches its key',
  },
  { id: 'edge-ca-chain', group: 'certificates', title: 'Edge CA chains to the trust bundle' },
  {
    id: 'identity-cert',
    group: 'certificates',
    title: 'device identity certificate is readable, in date, and matches its key',
  },
  {
    id: 'server-cert',
    group: 'server-certificate',
    title: "gateway's server certificate names the hostname (CN and SAN)",
  },
  { id: 'clock', group: 'clock', title: 'host clock agrees with the upstream (within 5 minutes)' },
  {
    id: 'storage',
    group: 'storage',
    title: 'data directory is writable, on persistent storage, with free space above the reserve',
  },
  ...UPSTREAM_PORTS.map((p) => ({
    id: `upstream-${p.port}` as const,
    group: 'upstream' as const,
    title: upstreamTitle(p),
  })),
  { id: 'registry', group: 'upstream', title: "the parent's registry API (/v2/) answers" },
] as const;

export type CheckId = (typeof CHECKS)[number]['id'];
export type CheckGroup = (typeof CHECKS)[number]['group'];

const TITLES = new Map<string, string>(CHECKS.map((c) => [c.id, c.title]));

export function titleOf(id: CheckId): string {
  return TITLES.get(id)!;
}

/** The ids of one group, in printing order. */
export function idsOf(group: CheckGroup): CheckId[] {
  return CHECKS.filter((c) => c.group === group).map((c) => c.id);
}

/** A result under the check's title from the table (or `title`, where the title names the upstream). */
export function result(
  id: CheckId,
  status: CheckStatus,
  detail: string,
  fix?: string,
  title = titleOf(id),
): CheckResult {
  return { id, title, status, detail, ...(fix ? { fix } : {}) };
}
