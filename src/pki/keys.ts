import { createPrivateKey, webcrypto, type KeyObject } from 'node:crypto';
import { UserError } from '../util/errors.ts';
import { readPemFile } from './pem.ts';

export type KeyAlgorithm = 'rsa' | 'ec';

/** What @peculiar/x509 needs to sign with a key: the key and the signature algorithm matching it. */
export interface SigningKey {
  privateKey: CryptoKey;
  signingAlgorithm: Algorithm | EcdsaParams;
}

export interface GeneratedKey extends SigningKey {
  publicKey: CryptoKey;
  keyPem: string;
}

const RSA_SIGN = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;

const EC_HASH: Record<string, string> = { 'P-256': 'SHA-256', 'P-384': 'SHA-384', 'P-521': 'SHA-512' };
const EC_CURVE_BY_OPENSSL_NAME: Record<string, string> = {
  prime256v1: 'P-256',
  secp384r1: 'P-384',
  secp521r1: 'P-521',
};

export async function generateKey(algorithm: KeyAlgorithm = 'rsa'): Promise<GeneratedKey> {
  if (algorithm !== 'rsa' && algorithm !== 'ec') {
    throw new UserError(`unknown key algorithm "${String(algorithm)}"`, 'Use "rsa" (RSA-2048) or "ec" (ECDSA P-256)');
  }
  const keys =
    algorithm === 'rsa'
      ? await webcrypto.subtle.generateKey(
          { ...RSA_SIGN, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) },
          true,
          ['sign', 'verify'],
        )
      : await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  const pair = keys as CryptoKeyPair;
  const der = await webcrypto.subtle.exportKey('pkcs8', pair.privateKey as webcrypto.CryptoKey);
  return {
    privateKey: pair.privateKey,
    publicKey: pair.publicKey,
    keyPem: derToPem(Buffer.from(der), 'PRIVATE KEY'),
    signingAlgorithm: algorithm === 'rsa' ? RSA_SIGN : { name: 'ECDSA', hash: 'SHA-256' },
  };
}

/** Parses a private key PEM (PKCS#8, PKCS#1 or SEC1) into a node KeyObject, with a useful error when it is not one. */
export function parsePrivateKey(keyPem: string, what = 'private key'): KeyObject {
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(keyPem) || /Proc-Type: 4,ENCRYPTED/.test(keyPem)) {
    throw new UserError(
      `the ${what} is encrypted with a pass phrase, which strata does not support`,
      'Decrypt it first: openssl pkey -in KEY -out KEY.plain.pem',
    );
  }
  try {
    return createPrivateKey(keyPem);
  } catch {
    throw new UserError(
      `the ${what} is not a readable private key`,
      'Pass an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----)',
    );
  }
}

/** Imports an issuer's private key for signing certificates. */
export async function importSigningKey(keyPem: string, what = 'issuer private key'): Promise<SigningKey> {
  const key = parsePrivateKey(keyPem, what);
  const der = key.export({ type: 'pkcs8', format: 'der' });
  if (key.asymmetricKeyType === 'rsa') {
    const privateKey = await webcrypto.subtle.importKey('pkcs8', der, RSA_SIGN, false, ['sign']);
    return { privateKey: privateKey as CryptoKey, signingAlgorithm: RSA_SIGN };
  }
  if (key.asymmetricKeyType === 'ec') {
    const curveName = key.asymmetricKeyDetails?.namedCurve ?? '';
    const namedCurve = EC_CURVE_BY_OPENSSL_NAME[curveName] ?? curveName;
    const hash = EC_HASH[namedCurve];
    if (!hash) {
      throw new UserError(
        `the ${what} uses the unsupported curve ${curveName}`,
        'Use an RSA or a P-256/P-384/P-521 EC key',
      );
    }
    const privateKey = await webcrypto.subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve }, false, ['sign']);
    return { privateKey: privateKey as CryptoKey, signingAlgorithm: { name: 'ECDSA', hash } };
  }
  throw new UserError(
    `the ${what} is a ${key.asymmetricKeyType ?? 'unknown'} key, which strata cannot sign with`,
    'Use an RSA (PKCS#1 v1.5) or an ECDSA key',
  );
}

export function derToPem(der: Buffer, label: string): string {
  const b64 = der
    .toString('base64')
    .replace(/(.{64})/g, '$1\n')
    .replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** Reads a PEM private key file; errors name the file and the fix. */
export function readKeyFile(file: string, what: string, hintWhenMissing?: string): string {
  const pem = readPemFile(file, what, hintWhenMissing);
  if (!/PRIVATE KEY-----/.test(pem)) {
    throw new UserError(
      `${what} ${file} holds no private key`,
      'Pass the PEM file that starts with -----BEGIN PRIVATE KEY-----',
    );
  }
  parsePrivateKey(pem, `${what} ${file}`);
  return pem;
}
