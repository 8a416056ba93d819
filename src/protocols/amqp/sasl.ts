import { wireText } from '../../util/log.ts';
import { claimFromToken, describeClaim } from './claims.ts';
import { amqpErrorOf } from './errors.ts';
import type { ClientConnection } from './types.ts';

/**
 * The SASL mechanisms IoT Hub offers, as rhea server mechanisms. rhea calls `start(response,
 * hostname)` and reads `outcome` (true = ok) and `username` afterwards.
 *
 * - ANONYMOUS and MSSBCBS: nothing proved yet; the client authenticates with CBS put-token.
 * - PLAIN: `{deviceId}@sas.{hub}` (or `{d}/{m}`, `{d}/modules/{m}`) or `{policy}@sas.root.{hub}`
 *   with the SAS token as the password.
 * - EXTERNAL: the TLS client certificate, checked when a link names the identity.
 *
 * A client that sends the plain AMQP header (the Node device SDK) skips SASL altogether.
 */

export interface SaslMechanism {
  outcome?: boolean;
  username?: string;
  start(response: Buffer | undefined, hostname?: string): Promise<void> | void;
  step?(response: Buffer | undefined): Promise<void> | void;
}

/** The parts of a SASL PLAIN user name IoT Hub understands. */
export type PlainUser =
  | { kind: 'identity'; deviceId: string; moduleId?: string; hubName: string }
  | { kind: 'policy'; keyName: string; hubName: string };

export function parsePlainUser(username: string): PlainUser | undefined {
  const at = username.lastIndexOf('@sas.');
  if (at <= 0) return undefined;
  const who = username.slice(0, at);
  const rest = username.slice(at + '@sas.'.length);
  if (rest.toLowerCase().startsWith('root.')) {
    const hubName = rest.slice('root.'.length);
    return hubName ? { kind: 'policy', keyName: who, hubName } : undefined;
  }
  if (!rest) return undefined;
  const parts = who.split('/');
  if (parts.length === 1) return { kind: 'identity', deviceId: who, hubName: rest };
  if (parts.length === 2 && parts[0] && parts[1])
    return { kind: 'identity', deviceId: parts[0], moduleId: parts[1], hubName: rest };
  if (parts.length === 3 && parts[1]!.toLowerCase() === 'modules' && parts[0] && parts[2]) {
    return { kind: 'identity', deviceId: parts[0], moduleId: parts[2], hubName: rest };
  }
  return undefined;
}

/** `authzid NUL authcid NUL passwd`. */
function splitPlain(response: Buffer | undefined): { username: string; password: string } | undefined {
  if (!response) return undefined;
  const first = response.indexOf(0);
  if (first < 0) return undefined;
  const second = response.indexOf(0, first + 1);
  if (second < 0) return undefined;
  return {
    username: response.subarray(first + 1, second).toString('utf8'),
    password: response.subarray(second + 1).toString('utf8'),
  };
}

/** Succeeds at once; whatever identity follows comes by CBS. */
export class PassThroughMechanism implements SaslMechanism {
  outcome?: boolean;
  username?: string;
  constructor(private readonly name: string) {}
  start(response: Buffer | undefined): void {
    this.outcome = true;
    this.username = response && response.length > 0 ? response.toString('utf8') : this.name;
  }
}

/** Succeeds when the TLS client presented a certificate; which identity it proves is decided per link. */
export class ExternalMechanism implements SaslMechanism {
  outcome?: boolean;
  username?: string;
  constructor(
    private readonly hasCertificate: () => boolean,
    private readonly onRefused: (why: string) => void,
  ) {}
  start(): void {
    this.outcome = this.hasCertificate();
    if (!this.outcome) this.onRefused('SASL EXTERNAL without a TLS client certificate');
    this.username = 'external';
  }
}

/** Checks user name and token through `check`, which also logs a refusal (undefined = malformed response). */
export class PlainMechanism implements SaslMechanism {
  outcome?: boolean;
  username?: string;
  constructor(
    private readonly check: (creds: { username: string; password: string } | undefined) => Promise<boolean>,
  ) {}
  async start(response: Buffer | undefined): Promise<void> {
    const creds = splitPlain(response);
    this.username = creds?.username;
    this.outcome = await this.check(creds);
  }
}

/**
 * The PLAIN check: the user name must name this hub and the identity or policy the token is for.
 * Accepted, the token's claim joins the connection; refused, the connection logs why.
 */
export async function checkPlain(
  conn: ClientConnection,
  creds: { username: string; password: string } | undefined,
): Promise<boolean> {
  if (!creds) {
    conn.refusal({}, 'SASL PLAIN refused: malformed response');
    return false;
  }
  const user = parsePlainUser(creds.username);
  if (!user) {
    conn.refusal(
      { username: wireText(creds.username) },
      'SASL PLAIN refused: user name is not {deviceId}@sas.{hub} or {policy}@sas.root.{hub}',
    );
    return false;
  }
  const hubNames = conn.shared.hostNames.map((h) => h.split('.')[0]!.toLowerCase());
  if (!hubNames.includes(user.hubName.toLowerCase())) {
    conn.refusal(
      { username: wireText(creds.username) },
      `SASL PLAIN refused: hub name "${wireText(user.hubName)}" is not this hub's`,
    );
    return false;
  }
  try {
    const claim = await claimFromToken(creds.password, conn.shared.checker, 'sasl-plain');
    const matches =
      user.kind === 'policy'
        ? claim.kind === 'policy' && claim.policy.keyName === user.keyName
        : claim.kind === 'identity' &&
          claim.identity.deviceId === user.deviceId &&
          claim.identity.moduleId === user.moduleId;
    if (!matches) {
      conn.refusal(
        { username: wireText(creds.username), token: describeClaim(claim) },
        'SASL PLAIN refused: the token is for someone else than the user name',
      );
      return false;
    }
    conn.claims.put(claim);
    conn.authenticated();
    conn.log.info({ who: describeClaim(claim) }, 'authenticated by SASL PLAIN');
    return true;
  } catch (err) {
    conn.refusal(
      { username: wireText(creds.username), reason: wireText(amqpErrorOf(err).description, 300) },
      'SASL PLAIN refused',
    );
    return false;
  }
}
