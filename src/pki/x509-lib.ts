import { webcrypto } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as X509 from '@peculiar/x509';

let lib: typeof X509 | undefined;

/**
 * @peculiar/x509 (and the reflect-metadata it needs) takes about a third of a second to load,
 * more than the rest of a CLI command: it is loaded on first use, synchronously from its
 * CommonJS build, so commands that never read a certificate do not pay for it.
 */
export function x509(): typeof X509 {
  if (lib) return lib;
  const require = createRequire(import.meta.url);
  require('reflect-metadata');
  lib = require('@peculiar/x509') as typeof X509;
  // One provider for the whole process: node's WebCrypto does every signature it makes.
  lib.cryptoProvider.set(webcrypto as unknown as Crypto);
  return lib;
}
