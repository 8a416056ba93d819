import { TLSSocket, type DetailedPeerCertificate } from 'node:tls';
import type { ClientCertificate } from '../../model/identity.ts';

/**
 * The certificate a TLS client presented, with the further certificates it sent, for the
 * engine to judge. The server asks for client certificates but accepts any at the TLS layer
 * (SAS clients send none), so an absent or unverified certificate is normal here.
 */
export function clientCertificateOf(socket: unknown): ClientCertificate | undefined {
  if (!(socket instanceof TLSSocket)) return undefined;
  const peer = socket.getPeerCertificate(true) as DetailedPeerCertificate | null;
  if (!peer?.raw || peer.raw.length === 0) return undefined;
  const chain: Buffer[] = [];
  const seen = new Set<string>([peer.fingerprint256]);
  let current: DetailedPeerCertificate = peer;
  // The issuer links end in a self-reference at the root.
  while (current.issuerCertificate?.raw && !seen.has(current.issuerCertificate.fingerprint256)) {
    current = current.issuerCertificate;
    seen.add(current.fingerprint256);
    chain.push(current.raw);
  }
  return chain.length > 0 ? { raw: peer.raw, chain } : { raw: peer.raw };
}
