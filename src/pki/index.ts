/** The certificate toolkit: keys, CAs, server and device certificates, chains, verification, PEM files. */
export {
  generateKey,
  importSigningKey,
  parsePrivateKey,
  readKeyFile,
  type KeyAlgorithm,
  type GeneratedKey,
  type SigningKey,
} from './keys.ts';
export {
  issueCertificate,
  createRootCa,
  createIntermediateCa,
  createEdgeCa,
  createServerCert,
  createDeviceCert,
  checkHostName,
  MAX_COMMON_NAME,
  type IssuedCert,
  type CertificateSpec,
  type KeyUsageName,
  type ExtendedKeyUsageName,
} from './issue.ts';
export { splitPemCertificates, fullChainPem, readPemFile, writeKeyFile, writeCertFile } from './pem.ts';
export {
  thumbprints,
  keyMatchesCertificate,
  parseCertificate,
  parseCertificates,
  readCertificateFile,
  summarizeCertificate,
  isCa,
  type ParsedCert,
  type CertificateSummary,
} from './inspect.ts';
export { verifyChain, type VerifyOptions, type VerifyResult, type VerifyFailure, type ChainLink } from './verify.ts';
