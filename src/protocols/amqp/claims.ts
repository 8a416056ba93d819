import type { AuthRequest, AuthResult, ClientCertificate, IdentityRef } from '../../model/identity.ts';
import { parseResourcePath } from '../../identity/authenticate.ts';
import { authenticatePolicyToken, hasRight, type AccessPolicy, type Right } from '../../identity/policies.ts';
import { parseSasToken, splitAudience } from '../../identity/sas.ts';
import { describeIdentity } from '../../model/identity.ts';
import { identityKey } from '../../model/identity.ts';
import { AmqpRefusal, CONDITION } from './errors.ts';

/**
 * What one AMQP connection has proved: device/module identities (CBS put-token, SASL PLAIN, or
 * a client certificate checked at link attach) and shared access policies (service and Event
 * Hubs clients). One connection may hold many of each; every claim lapses at its expiry.
 */

export type ClaimSource = 'cbs' | 'sasl-plain' | 'x509';

export interface IdentityClaim {
  kind: 'identity';
  identity: IdentityRef;
  auth: AuthResult;
  source: ClaimSource;
  /** Epoch ms; undefined = does not lapse. */
  expiresAt?: number;
  /** Granted to a child gateway acting for this identity (on-behalf-of). */
  onBehalfOf?: boolean;
}

export interface PolicyClaim {
  kind: 'policy';
  policy: AccessPolicy;
  /** The token's audience (decoded `sr`), e.g. `myhub.example` or `sb://myhub.example/myhub`. */
  audience: string;
  /** Host and path of the audience, path without a trailing slash ('' for the whole hub). */
  host: string;
  path: string;
  source: ClaimSource;
  expiresAt?: number;
}

export type Claim = IdentityClaim | PolicyClaim;

/** What checking a token needs: the engine's authenticate (the same code as MQTT) and the hub's policies. */
export interface TokenChecker {
  authenticate(req: AuthRequest): Promise<AuthResult>;
  policy(keyName: string): AccessPolicy | undefined;
  /** Host names a policy token's audience may name. */
  hostNames: string[];
}

/** Checks a SAS token (device, module or policy) and returns what it proves. Throws EngineError / AccessDenied / AmqpRefusal. */
export async function claimFromToken(token: string, checker: TokenChecker, source: ClaimSource): Promise<Claim> {
  let parsed;
  try {
    parsed = parseSasToken(token.trim());
  } catch (err) {
    throw new AmqpRefusal(CONDITION.unauthorized, `unreadable SAS token: ${(err as Error).message}`);
  }
  if (parsed.skn) {
    const { policy, token: t } = authenticatePolicyToken(token, {
      hostnames: checker.hostNames,
      policy: checker.policy,
    });
    const { host, path } = splitAudience(t.sr);
    return { kind: 'policy', policy, audience: t.sr, host, path, source, expiresAt: t.se * 1000 };
  }
  const { path } = splitAudience(parsed.sr);
  const identity = parseResourcePath(path);
  if (!identity) {
    throw new AmqpRefusal(
      CONDITION.unauthorized,
      `SAS token audience "${parsed.sr}" names no device or module, and the token names no shared access policy (skn)`,
    );
  }
  const auth = await checker.authenticate({ ...identity, sasToken: token.trim() });
  return { kind: 'identity', identity: auth.identity, auth, source, expiresAt: auth.expiresAt };
}

/** Checks a client certificate for the identity a link names. */
export async function claimFromCertificate(
  identity: IdentityRef,
  cert: ClientCertificate,
  checker: TokenChecker,
): Promise<IdentityClaim> {
  const auth = await checker.authenticate({ ...identity, clientCertificate: cert });
  return { kind: 'identity', identity: auth.identity, auth, source: 'x509', expiresAt: auth.expiresAt };
}

export function describeClaim(c: Claim): string {
  return c.kind === 'identity' ? describeIdentity(c.identity) : `policy ${c.policy.keyName} (audience ${c.audience})`;
}

/** setTimeout cannot wait longer than this; longer waits re-arm. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The claims of one connection, each with a timer that drops it at expiry and tells the
 * connection (which detaches the links that relied on it).
 */
export class ClaimSet {
  private readonly identities = new Map<string, { claim: IdentityClaim; timer?: NodeJS.Timeout }>();
  private readonly policies = new Map<string, { claim: PolicyClaim; timer?: NodeJS.Timeout }>();

  constructor(private readonly onExpired: (claim: Claim) => void) {}

  /** Adds or renews a claim; a renewal replaces the previous one of the same identity / policy and audience. */
  put(claim: Claim): { renewed: boolean } {
    if (claim.kind === 'identity') {
      const key = identityKey(claim.identity);
      const prev = this.identities.get(key);
      if (prev?.timer) clearTimeout(prev.timer);
      const entry: { claim: IdentityClaim; timer?: NodeJS.Timeout } = { claim };
      this.identities.set(key, entry);
      this.arm(entry, () => this.identities.get(key) === entry && this.identities.delete(key));
      return { renewed: prev !== undefined };
    }
    const key = `${claim.policy.keyName}\n${claim.audience.toLowerCase()}`;
    const prev = this.policies.get(key);
    if (prev?.timer) clearTimeout(prev.timer);
    const entry: { claim: PolicyClaim; timer?: NodeJS.Timeout } = { claim };
    this.policies.set(key, entry);
    this.arm(entry, () => this.policies.get(key) === entry && this.policies.delete(key));
    return { renewed: prev !== undefined };
  }

  /** The live claim for exactly this identity. */
  identity(id: IdentityRef, now = Date.now()): IdentityClaim | undefined {
    const c = this.identities.get(identityKey(id))?.claim;
    return c && (c.expiresAt === undefined || c.expiresAt > now) ? c : undefined;
  }

  /**
   * A live policy claim granting one of `rights`, whose audience names one of `hosts` and
   * covers `resourcePath` (a policy token scoped to a path covers only what is under it).
   */
  policyWith(rights: readonly Right[], hosts: string[], resourcePath = '', now = Date.now()): PolicyClaim | undefined {
    const wanted = resourcePath.toLowerCase().replace(/\/+$/, '');
    for (const { claim } of this.policies.values()) {
      if (claim.expiresAt !== undefined && claim.expiresAt <= now) continue;
      if (!rights.some((r) => hasRight(claim.policy, r))) continue;
      if (!hosts.some((h) => h.toLowerCase() === claim.host.toLowerCase())) continue;
      const scope = claim.path.toLowerCase();
      if (scope && wanted !== scope && !wanted.startsWith(`${scope}/`)) continue;
      return claim;
    }
    return undefined;
  }

  allPolicies(): PolicyClaim[] {
    return [...this.policies.values()].map((e) => e.claim);
  }

  clear(): void {
    for (const e of this.identities.values()) if (e.timer) clearTimeout(e.timer);
    for (const e of this.policies.values()) if (e.timer) clearTimeout(e.timer);
    this.identities.clear();
    this.policies.clear();
  }

  /** Sets `entry.timer` to drop the claim at its expiry (re-arming when the wait is beyond setTimeout's range). */
  private arm(entry: { claim: Claim; timer?: NodeJS.Timeout }, drop: () => unknown): void {
    const { claim } = entry;
    if (claim.expiresAt === undefined) return;
    const wait = Math.max(0, claim.expiresAt - Date.now());
    entry.timer = setTimeout(
      () => {
        if (claim.expiresAt! > Date.now()) return this.arm(entry, drop);
        if (drop()) this.onExpired(claim);
      },
      Math.min(wait, MAX_TIMER_MS),
    );
    entry.timer.unref();
  }
}
