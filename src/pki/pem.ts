import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { UserError } from '../util/errors.ts';

const CERT_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** The certificates of a PEM bundle, in file order, each normalised to end with one newline. */
export function splitPemCertificates(pem: string): string[] {
  return (pem.match(CERT_BLOCK) ?? []).map((block) => `${block.replace(/\r\n/g, '\n').trim()}\n`);
}

/** Concatenates certificates (each argument may itself be a bundle), leaf first, dropping exact repeats. */
export function fullChainPem(...certPems: string[]): string {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const block of certPems.flatMap(splitPemCertificates)) {
    const body = block.replace(/\s+/g, '');
    if (seen.has(body)) continue;
    seen.add(body);
    out.push(block);
  }
  return out.join('');
}

/**
 * Reads a PEM file for a person who passed its path: every failure becomes a UserError naming the file,
 * what it was meant to be, and what to do.
 */
export function readPemFile(path: string, what: string, hintWhenMissing?: string): string {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new UserError(`${what} not found: ${path}`, hintWhenMissing ?? 'Check the path');
    }
    if (code === 'EISDIR')
      throw new UserError(`${path} is a directory, not a ${what} file`, 'Pass the path of the PEM file');
    if (code === 'EACCES' || code === 'EPERM') {
      throw new UserError(
        `cannot read ${what} ${path}: permission denied`,
        'Run as a user who may read it, or fix its permissions',
      );
    }
    throw new UserError(`cannot read ${what} ${path}: ${(err as Error).message}`);
  }
  const text = data.toString('utf8');
  if (!/-----BEGIN [A-Z0-9 ]+-----/.test(text)) {
    // DER starts with an ASN.1 SEQUENCE tag; tell the user how to convert rather than just "bad file".
    if (data.length > 0 && data[0] === 0x30) {
      throw new UserError(
        `${what} ${path} is binary DER, not PEM`,
        `Convert it first: openssl ${/key/i.test(what) ? 'pkey' : 'x509'} -inform der -in ${path} -out ${path}.pem`,
      );
    }
    throw new UserError(`${what} ${path} is not a PEM file (no "-----BEGIN" line)`, `Pass the PEM-encoded ${what}`);
  }
  return text;
}

function writeWithMode(path: string, pem: string, mode: number, dirMode: number): void {
  const dir = dirname(path);
  if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: dirMode });
  writeFileSync(path, pem, { mode });
  // The mode given to writeFileSync only applies to new files and is reduced by the umask.
  chmodSync(path, mode);
}

/** Writes a private key readable by its owner only (0600); creates missing parent directories (0700). */
export function writeKeyFile(path: string, pem: string): void {
  writeWithMode(path, pem, 0o600, 0o700);
}

/** Writes a certificate readable by everyone (0644); creates missing parent directories. */
export function writeCertFile(path: string, pem: string): void {
  writeWithMode(path, pem, 0o644, 0o755);
}
