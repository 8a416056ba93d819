import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { Server as TlsServer } from 'node:tls';
import {
  createServerCert,
  issueCertificate,
  fullChainPem,
  keyMatchesCertificate,
  splitPemCertificates,
  writeCertFile,
  writeKeyFile,
} from '../pki/index.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';

const log = childLog('edge-security');

const DAY_MS = 24 * 3600 * 1000;
/** The original's quickstart Edge CA lifetime. */
export const QUICKSTART_CA_DAYS = 90;
/** Server certificates are issued for this long (never past the Edge CA's own end). */
export const SERVER_CERT_DAYS = 90;
/** The DNS name every edge hub server certificate carries besides the hostname. */
export const EDGEHUB_SAN = 'edgehub';
/** setTimeout cannot wait longer than this; longer waits are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Where the security manager keeps what it makes, under the gateway's data directory. */
export function edgePkiPaths(dataDir: string) {
  const dir = join(dataDir, 'pki');
  return {
    dir,
    quickstartCaCert: join(dir, 'quickstart-edge-ca.cert.pem'),
    quickstartCaKey: join(dir, 'private', 'quickstart-edge-ca.key.pem'),
    serverCert: join(dir, 'edge-hub-server.full-chain.cert.pem'),
    serverKey: join(dir, 'private', 'edge-hub-server.key.pem'),
  };
}

export interface EdgeCaPems {
  /** The Edge CA certificate, optionally followed by its issuers (a full-chain file). */
  certPem: string;
  keyPem: string;
}

export interface SecurityManagerOptions {
  dataDir: string;
  /** The gateway's hostname: CN and first SAN of the server certificate. */
  hostname: string;
  /** The edge device id (names the quickstart Edge CA). */
  deviceId: string;
  /** From config [edge_ca]; absent: a quickstart Edge CA kept in the data directory. */
  edgeCa?: EdgeCaPems;
  /** Re-issue the server certificate when less than this share of its lifetime is left (default 0.2). */
  renewAtRemainingFraction?: number;
  /** Replace the quickstart Edge CA when less than this is left of it (default 14 days). */
  quickstartRenewBeforeMs?: number;
  /** Clock (tests). */
  now?: () => number;
}

export interface ServerIdentity {
  /** Server certificate followed by the Edge CA chain: what every listener presents. */
  certPem: string;
  keyPem: string;
  notBefore: Date;
  notAfter: Date;
  /** SHA-256 fingerprint of the server certificate. */
  fingerprint: string;
}

export interface SecurityManagerEvents {
  /** A new server certificate is in place on every attached listener. */
  renewed: [identity: ServerIdentity, why: string];
}

/**
 * The gateway's TLS identity: an Edge CA (from the config, or a quickstart one it makes and
 * keeps), and the edge hub server certificate issued from it (CN = hostname, SAN = hostname as
 * DNS or IP plus DNS `edgehub`, serverAuth), presented with the full chain. The certificate is
 * re-issued before it expires, or when the hostname or Edge CA changes, and swapped into every
 * attached TLS server with setSecureContext: live connections keep going and the listeners are
 * never closed (the original restarts its edge hub for this).
 */
export class SecurityManager extends EventEmitter<SecurityManagerEvents> {
  private hostname: string;
  private ca!: { certPem: string; keyPem: string; quickstart: boolean; notAfter: Date };
  private server!: ServerIdentity;
  private readonly servers = new Set<TlsServer>();
  private timer?: NodeJS.Timeout;
  private closed = false;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly paths: ReturnType<typeof edgePkiPaths>;
  private readonly now: () => number;

  private constructor(private readonly o: SecurityManagerOptions) {
    super();
    this.hostname = o.hostname;
    this.paths = edgePkiPaths(o.dataDir);
    this.now = o.now ?? Date.now;
  }

  /** Loads or makes the Edge CA and the server certificate, and arms renewal. */
  static async start(o: SecurityManagerOptions): Promise<SecurityManager> {
    const m = new SecurityManager(o);
    mkdirSync(m.paths.dir, { recursive: true, mode: 0o755 });
    m.ca = await m.loadCa(o.edgeCa);
    m.server = await m.loadOrIssueServer();
    m.arm();
    return m;
  }

  /** What listeners present now. */
  get identity(): ServerIdentity {
    return this.server;
  }

  /** The Edge CA in use (first certificate only). */
  get edgeCaPem(): string {
    return splitPemCertificates(this.ca.certPem)[0] ?? this.ca.certPem;
  }

  get usingQuickstartCa(): boolean {
    return this.ca.quickstart;
  }

  /** Where the quickstart Edge CA certificate is (downstream devices trust it when no [edge_ca] is set). */
  get quickstartCaPath(): string {
    return this.paths.quickstartCaCert;
  }

  get currentHostname(): string {
    return this.hostname;
  }

  /** Options for tls.createServer / https: the current certificate and key. */
  tlsOptions(): { cert: string; key: string } {
    return { cert: this.server.certPem, key: this.server.keyPem };
  }

  /** A TLS server (MQTT, AMQP, HTTPS) that must present the current certificate from now on. */
  attach(server: TlsServer): void {
    this.servers.add(server);
    server.once('close', () => this.servers.delete(server));
    server.setSecureContext(this.tlsOptions());
  }

  /**
   * Applies a changed hostname and/or Edge CA (`edgeCa: undefined` means the quickstart one):
   * re-issues the server certificate when anything changed and swaps it into every listener.
   * Resolves with whether it changed anything.
   */
  update(o: { hostname: string; edgeCa?: EdgeCaPems }): Promise<boolean> {
    return this.serialize(async () => {
      const reasons: string[] = [];
      const hostChanged = o.hostname !== this.hostname;
      if (hostChanged) reasons.push(`hostname changed from ${this.hostname} to ${o.hostname}`);
      const caChanged = o.edgeCa ? (!this.ca.quickstart ? !sameCa(o.edgeCa, this.ca) : true) : !this.ca.quickstart;
      if (caChanged)
        reasons.push(
          o.edgeCa ? 'a different Edge CA was configured' : '[edge_ca] was removed: using the quickstart Edge CA',
        );
      if (reasons.length === 0) return false;
      const ca = caChanged ? await this.loadCa(o.edgeCa) : this.ca;
      const server = await this.issue(o.hostname, ca);
      this.hostname = o.hostname;
      this.ca = ca;
      this.swap(server, reasons.join('; '));
      return true;
    });
  }

  /** Re-issues the server certificate now (and the quickstart Edge CA when it is near its end). */
  renew(why = 'renewal requested'): Promise<ServerIdentity> {
    return this.serialize(async () => {
      if (this.ca.quickstart && this.quickstartDue(this.ca.notAfter)) this.ca = await this.makeQuickstartCa();
      const server = await this.issue(this.hostname, this.ca);
      this.swap(server, why);
      return server;
    });
  }

  /** Renews when the certificate is inside its renewal window; resolves with whether it did. */
  async renewIfDue(): Promise<boolean> {
    if (!this.serverDue(this.server) && !(this.ca.quickstart && this.quickstartDue(this.ca.notAfter))) return false;
    await this.renew(`the server certificate expires ${this.server.notAfter.toISOString()}`);
    return true;
  }

  /** When renewal is due (epoch ms). */
  renewalDueAt(): number {
    const s = this.server;
    const life = s.notAfter.getTime() - s.notBefore.getTime();
    const serverDue = s.notAfter.getTime() - life * (this.o.renewAtRemainingFraction ?? 0.2);
    if (!this.ca.quickstart) return serverDue;
    return Math.min(serverDue, this.ca.notAfter.getTime() - (this.o.quickstartRenewBeforeMs ?? 14 * DAY_MS));
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.servers.clear();
  }

  // ---------------------------------------------------------------------------------------

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private swap(server: ServerIdentity, why: string): void {
    this.server = server;
    writeKeyFile(this.paths.serverKey, server.keyPem);
    writeCertFile(this.paths.serverCert, server.certPem);
    for (const s of this.servers) {
      try {
        s.setSecureContext(this.tlsOptions());
      } catch (err) {
        log.error({ err }, 'could not install the new server certificate on a listener');
      }
    }
    log.info(
      {
        hostname: this.hostname,
        notAfter: server.notAfter.toISOString(),
        fingerprint: server.fingerprint,
        listeners: this.servers.size,
        why,
      },
      'new server certificate in place (listeners kept open)',
    );
    this.arm();
    this.emit('renewed', server, why);
  }

  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.closed) return;
    const wait = Math.max(1000, this.renewalDueAt() - this.now());
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        if (this.renewalDueAt() > this.now()) return this.arm();
        this.renewIfDue().catch((err: unknown) => {
          log.error({ err }, 'server certificate renewal failed; retrying in a minute');
          if (this.closed) return;
          this.timer = setTimeout(() => this.arm(), 60_000);
          this.timer.unref();
        });
      },
      Math.min(wait, MAX_TIMER_MS),
    );
    this.timer.unref();
  }

  private serverDue(s: ServerIdentity): boolean {
    const life = s.notAfter.getTime() - s.notBefore.getTime();
    return s.notAfter.getTime() - this.now() < life * (this.o.renewAtRemainingFraction ?? 0.2);
  }

  private quickstartDue(notAfter: Date): boolean {
    return notAfter.getTime() - this.now() < (this.o.quickstartRenewBeforeMs ?? 14 * DAY_MS);
  }

  private async loadCa(given: EdgeCaPems | undefined): Promise<SecurityManager['ca']> {
    if (given) {
      const [first] = splitPemCertificates(given.certPem);
      if (!first)
        throw new UserError(
          'the Edge CA certificate holds no PEM certificate',
          'Point [edge_ca] cert at the Edge CA (full chain) PEM file',
        );
      return {
        certPem: given.certPem,
        keyPem: given.keyPem,
        quickstart: false,
        notAfter: new Date(new X509Certificate(first).validTo),
      };
    }
    const p = this.paths;
    if (existsSync(p.quickstartCaCert) && existsSync(p.quickstartCaKey)) {
      try {
        const certPem = readFileSync(p.quickstartCaCert, 'utf8');
        const keyPem = readFileSync(p.quickstartCaKey, 'utf8');
        const notAfter = new Date(new X509Certificate(certPem).validTo);
        if (keyMatchesCertificate(keyPem, certPem) && !this.quickstartDue(notAfter)) {
          return { certPem, keyPem, quickstart: true, notAfter };
        }
        log.info(
          { notAfter: notAfter.toISOString() },
          'the quickstart Edge CA is near its end (or does not match its key); making a new one',
        );
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'the kept quickstart Edge CA is unreadable; making a new one');
      }
    }
    return this.makeQuickstartCa();
  }

  private async makeQuickstartCa(): Promise<SecurityManager['ca']> {
    // Self-signed, as the original's quickstart CA: downstream devices must trust it directly.
    const issued = await issueCertificate({
      commonName: `Strata quickstart Edge CA ${this.o.deviceId}`.slice(0, 63),
      days: QUICKSTART_CA_DAYS,
      ca: true,
      pathLength: 0,
    });
    writeKeyFile(this.paths.quickstartCaKey, issued.keyPem);
    writeCertFile(this.paths.quickstartCaCert, issued.certPem);
    const notAfter = new Date(new X509Certificate(issued.certPem).validTo);
    log.warn(
      { path: this.paths.quickstartCaCert, notAfter: notAfter.toISOString() },
      `no [edge_ca] configured: made a quickstart Edge CA valid ${QUICKSTART_CA_DAYS} days; downstream devices must trust it (for production, configure [edge_ca] issued under your root CA)`,
    );
    return { certPem: issued.certPem, keyPem: issued.keyPem, quickstart: true, notAfter };
  }

  private async loadOrIssueServer(): Promise<ServerIdentity> {
    const p = this.paths;
    if (existsSync(p.serverCert) && existsSync(p.serverKey)) {
      try {
        const certPem = readFileSync(p.serverCert, 'utf8');
        const keyPem = readFileSync(p.serverKey, 'utf8');
        const id = describeServer(certPem, keyPem);
        if (this.fits(id, this.hostname, this.ca) && !this.serverDue(id)) {
          log.info(
            { hostname: this.hostname, notAfter: id.notAfter.toISOString() },
            'reusing the kept server certificate',
          );
          return id;
        }
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'the kept server certificate is unreadable; issuing a new one');
      }
    }
    const id = await this.issue(this.hostname, this.ca);
    writeKeyFile(p.serverKey, id.keyPem);
    writeCertFile(p.serverCert, id.certPem);
    log.info(
      { hostname: this.hostname, notAfter: id.notAfter.toISOString(), path: p.serverCert },
      'issued the edge hub server certificate',
    );
    return id;
  }

  /** Whether a kept certificate still says what a fresh one would: this hostname, issued by this CA, and its key. */
  private fits(id: ServerIdentity, hostname: string, ca: SecurityManager['ca']): boolean {
    const [leafPem] = splitPemCertificates(id.certPem);
    if (!leafPem) return false;
    const leaf = new X509Certificate(leafPem);
    const caCert = new X509Certificate(splitPemCertificates(ca.certPem)[0]!);
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(leaf.subject)?.[1];
    const covers = isIP(hostname) ? leaf.checkIP(hostname) !== undefined : leaf.checkHost(hostname) !== undefined;
    return (
      cn === hostname &&
      covers &&
      leaf.checkHost(EDGEHUB_SAN) !== undefined &&
      leaf.checkIssued(caCert) &&
      leaf.verify(caCert.publicKey) &&
      keyMatchesCertificate(id.keyPem, leafPem)
    );
  }

  private async issue(hostname: string, ca: SecurityManager['ca']): Promise<ServerIdentity> {
    const left = ca.notAfter.getTime() - Date.now();
    if (left <= 0) {
      throw new UserError(
        `the Edge CA expired on ${ca.notAfter.toISOString()}`,
        ca.quickstart
          ? 'Delete the quickstart CA files in the data directory and restart'
          : 'Issue a new Edge CA and point [edge_ca] at it, then `strata edge config apply`',
      );
    }
    const days = Math.max(1, Math.min(SERVER_CERT_DAYS, Math.floor(left / DAY_MS)));
    if (left < 2 * DAY_MS)
      log.warn({ notAfter: ca.notAfter.toISOString() }, 'the Edge CA expires within two days; renew it');
    const [caLeaf] = splitPemCertificates(ca.certPem);
    const issued = await createServerCert({
      hostname,
      extraNames: [EDGEHUB_SAN],
      issuer: { certPem: caLeaf!, keyPem: ca.keyPem },
      days,
    });
    return describeServer(fullChainPem(issued.certPem, ca.certPem), issued.keyPem);
  }
}

function describeServer(certPem: string, keyPem: string): ServerIdentity {
  const [leafPem] = splitPemCertificates(certPem);
  if (!leafPem) throw new Error('no certificate in the server certificate file');
  const leaf = new X509Certificate(leafPem);
  return {
    certPem,
    keyPem,
    notBefore: new Date(leaf.validFrom),
    notAfter: new Date(leaf.validTo),
    fingerprint: leaf.fingerprint256,
  };
}

function sameCa(a: EdgeCaPems, b: { certPem: string; keyPem: string }): boolean {
  const first = (pem: string) => (splitPemCertificates(pem)[0] ?? '').replace(/\s+/g, '');
  return first(a.certPem) === first(b.certPem) && a.certPem.replace(/\s+/g, '') === b.certPem.replace(/\s+/g, '');
}
