import { X509Certificate } from 'node:crypto';
import type Database from 'better-sqlite3';

/** A CA certificate registered with the hub for X.509 CA-signed device authentication. */
export interface TrustedCa {
  name: string;
  /** Upper-case hex SHA-256 thumbprint. */
  thumbprint: string;
  subject: string;
  notAfter: string;
  pem: string;
  addedAt: number;
}

/**
 * The CAs the hub trusts for `certificateAuthority` devices, in the engine database.
 * The hub reads them on each X.509 CA authentication, so `strata hub ca add` takes
 * effect without a restart.
 */
export class TrustedCas {
  private readonly s: Record<string, Database.Statement>;
  private cache?: { version: string; certs: X509Certificate[] };
  private localChanges = 0;

  constructor(private readonly db: Database.Database) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS trusted_cas (
        name       TEXT PRIMARY KEY,
        thumbprint TEXT NOT NULL UNIQUE,
        subject    TEXT NOT NULL,
        not_after  TEXT NOT NULL,
        pem        TEXT NOT NULL,
        added_ms   INTEGER NOT NULL
      );
    `);
    this.s = {
      insert: db.prepare(
        'INSERT INTO trusted_cas (name, thumbprint, subject, not_after, pem, added_ms) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      list: db.prepare('SELECT * FROM trusted_cas ORDER BY name'),
      byName: db.prepare('SELECT * FROM trusted_cas WHERE name = ?'),
      byThumb: db.prepare('SELECT * FROM trusted_cas WHERE thumbprint = ?'),
      remove: db.prepare('DELETE FROM trusted_cas WHERE name = ? OR thumbprint = ?'),
    };
  }

  /**
   * Registers a CA certificate (PEM). Throws an Error with a readable message when the PEM is
   * not a certificate, not a CA, or already registered.
   */
  add(name: string, pem: string, now = Date.now()): TrustedCa {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(pem);
    } catch {
      throw new Error('the file is not a PEM certificate');
    }
    if (!cert.ca)
      throw new Error(`"${cert.subject.replace(/\n/g, ', ')}" is not a CA certificate (basicConstraints CA:FALSE)`);
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name))
      throw new Error(`invalid name "${name}": use letters, digits, ".", "_" or "-" (at most 64)`);
    const thumbprint = cert.fingerprint256.replace(/:/g, '').toUpperCase();
    if (this.s.byName.get(name)) throw new Error(`a CA named "${name}" is already registered`);
    const dup = this.s.byThumb.get(thumbprint) as { name: string } | undefined;
    if (dup) throw new Error(`this certificate is already registered as "${dup.name}"`);
    const entry: TrustedCa = {
      name,
      thumbprint,
      subject: cert.subject.replace(/\n/g, ', '),
      notAfter: new Date(cert.validTo).toISOString(),
      pem: cert.toString(),
      addedAt: now,
    };
    this.s.insert.run(entry.name, entry.thumbprint, entry.subject, entry.notAfter, entry.pem, entry.addedAt);
    this.localChanges++;
    return entry;
  }

  list(): TrustedCa[] {
    return (this.s.list.all() as Array<Record<string, unknown>>).map((r) => ({
      name: r.name as string,
      thumbprint: r.thumbprint as string,
      subject: r.subject as string,
      notAfter: r.not_after as string,
      pem: r.pem as string,
      addedAt: r.added_ms as number,
    }));
  }

  /** Removes by name or thumbprint; returns whether something was removed. */
  remove(nameOrThumbprint: string): boolean {
    const removed = this.s.remove.run(nameOrThumbprint, nameOrThumbprint.replace(/:/g, '').toUpperCase()).changes > 0;
    if (removed) this.localChanges++;
    return removed;
  }

  /** The registered CA certificates, re-read only when the database changed. */
  certificates(): X509Certificate[] {
    // data_version moves when another connection (the CLI) committed; localChanges covers this one.
    const version = `${this.db.pragma('data_version', { simple: true }) as number}:${this.localChanges}`;
    if (!this.cache || this.cache.version !== version) {
      this.cache = { version, certs: this.list().map((c) => new X509Certificate(c.pem)) };
    }
    return this.cache.certs;
  }
}
