/**
 * The gateway's security manager: the server certificate it issues from the Edge CA (checked
 * with the openssl binary), the quickstart Edge CA it keeps, and renewal / hostname / Edge CA
 * changes swapped into a listening TLS server without closing it or its live connections.
 */
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import { SecurityManager, edgePkiPaths, QUICKSTART_CA_DAYS } from '../../src/edge/security-manager.ts';
import {
  createEdgeCa,
  createIntermediateCa,
  createRootCa,
  fullChainPem,
  splitPemCertificates,
} from '../../src/pki/index.ts';
import { exec, opensslConnect, randomLoopbackAddress } from '../helpers/tls.ts';

const DAY = 24 * 3600 * 1000;
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'strata-secmgr-'));
  dirs.push(d);
  return d;
}

async function pki() {
  const root = await createRootCa({ commonName: 'Test root' });
  const inter = await createIntermediateCa({ commonName: 'Test intermediate', issuer: root, pathLength: 1 });
  const edge = await createEdgeCa({ commonName: 'gw1.ca', issuer: inter });
  return { root, inter, edge, edgeFullChain: fullChainPem(edge.certPem, inter.certPem, root.certPem) };
}

async function openssl(args: string[], input?: string): Promise<string> {
  const r = await exec('openssl', args, { input });
  assert.equal(r.code, 0, `openssl ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** A TLS echo server on its own loopback address with the manager's certificate attached. */
async function echoServer(
  m: SecurityManager,
): Promise<{ server: tls.Server; address: string; port: number; stop(): Promise<void> }> {
  const address = randomLoopbackAddress();
  const sockets = new Set<import('node:net').Socket>();
  const server = tls.createServer({ ...m.tlsOptions() }, (s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  // Raw connections, so that stop() also ends those whose handshake the server has not finished.
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  m.attach(server);
  const stop = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return { server, address, port: (server.address() as AddressInfo).port, stop };
}

function connect(address: string, port: number, ca: string, servername?: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: address, port, ca, servername }, () => resolve(s));
    s.once('error', reject);
  });
}

function echo(s: tls.TLSSocket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    s.once('data', (d: Buffer) => resolve(d.toString()));
    s.once('error', reject);
    s.write(text);
  });
}

describe('SecurityManager', () => {
  test('issues the server certificate from the configured Edge CA: CN = hostname, SAN hostname + edgehub, serverAuth, full chain', async (t) => {
    const dir = await tempDir();
    const { root, edge, edgeFullChain } = await pki();
    const m = await SecurityManager.start({
      dataDir: dir,
      hostname: 'gateway.example.local',
      deviceId: 'gw1',
      edgeCa: { certPem: edgeFullChain, keyPem: edge.keyPem },
    });
    t.after(() => m.close());
    const chain = splitPemCertificates(m.identity.certPem);
    assert.equal(chain.length, 4, 'server, Edge CA, intermediate, root');
    const text = await openssl(['x509', '-noout', '-text'], chain[0]);
    assert.match(text, /Subject: CN\s?=\s?gateway\.example\.local/);
    assert.match(text, /Issuer: CN\s?=\s?gw1\.ca/);
    assert.match(text, /DNS:gateway\.example\.local, DNS:edgehub/);
    assert.match(text, /TLS Web Server Authentication/);
    assert.match(text, /CA:FALSE/);
    // The chain verifies to the root with openssl, for this host name.
    const d = await tempDir();
    await writeFile(join(d, 'root.pem'), root.certPem);
    await writeFile(join(d, 'untrusted.pem'), chain.slice(1).join(''));
    await writeFile(join(d, 'leaf.pem'), chain[0]);
    const v = await openssl([
      'verify',
      '-CAfile',
      join(d, 'root.pem'),
      '-untrusted',
      join(d, 'untrusted.pem'),
      '-purpose',
      'sslserver',
      '-verify_hostname',
      'gateway.example.local',
      join(d, 'leaf.pem'),
    ]);
    assert.match(v, /leaf\.pem: OK/);
    // Kept on disk: key 0600, certificate 0644.
    const p = edgePkiPaths(dir);
    assert.equal(statSync(p.serverKey).mode & 0o777, 0o600);
    assert.equal(statSync(p.serverCert).mode & 0o777, 0o644);
  });

  test('an IP hostname goes into the SAN as an IP address, and s_client sees the full chain', async (t) => {
    const dir = await tempDir();
    const { root, edge, edgeFullChain } = await pki();
    const address = randomLoopbackAddress();
    const m = await SecurityManager.start({
      dataDir: dir,
      hostname: address,
      deviceId: 'gw1',
      edgeCa: { certPem: edgeFullChain, keyPem: edge.keyPem },
    });
    t.after(() => m.close());
    const text = await openssl(['x509', '-noout', '-text'], m.identity.certPem);
    assert.match(text, new RegExp(`IP Address:${address.replace(/\./g, '\\.')}`));
    assert.match(text, /DNS:edgehub/);
    const server = tls.createServer(m.tlsOptions(), (s) => s.end());
    await new Promise<void>((resolve) => server.listen(0, address, resolve));
    t.after(() => new Promise<void>((r) => server.close(() => r())));
    m.attach(server);
    const d = await tempDir();
    await writeFile(join(d, 'root.pem'), root.certPem);
    const r = await opensslConnect({
      address,
      port: (server.address() as AddressInfo).port,
      caFile: join(d, 'root.pem'),
      host: address,
    });
    assert.match(r.stdout, /Verify return code: 0 \(ok\)/, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`0 s:\\s?CN\\s?=\\s?${address.replace(/\./g, '\\.')}`));
    assert.match(r.stdout, /1 s:\s?CN\s?=\s?gw1\.ca/);
  });

  test('renewal swaps the certificate into a listening server: new connections see it, the old connection keeps working', async (t) => {
    const dir = await tempDir();
    const { root, edge, edgeFullChain } = await pki();
    const m = await SecurityManager.start({
      dataDir: dir,
      hostname: 'gw.local',
      deviceId: 'gw1',
      edgeCa: { certPem: edgeFullChain, keyPem: edge.keyPem },
    });
    t.after(() => m.close());
    const { server, address, port, stop } = await echoServer(m);
    t.after(stop);
    const first = await connect(address, port, root.certPem, 'gw.local');
    t.after(() => first.destroy());
    const before = first.getPeerX509Certificate()!.fingerprint256;
    assert.equal(before, m.identity.fingerprint);
    assert.equal(await echo(first, 'one'), 'one');

    const renewed: string[] = [];
    m.on('renewed', (_id, why) => renewed.push(why));
    const next = await m.renew('test');
    assert.notEqual(next.fingerprint, before);
    assert.deepEqual(renewed, ['test']);
    assert.ok(server.listening, 'the listener was never closed');
    assert.equal(await echo(first, 'still here'), 'still here', 'the connection made before the renewal still works');
    const second = await connect(address, port, root.certPem, 'gw.local');
    t.after(() => second.destroy());
    assert.equal(
      second.getPeerX509Certificate()!.fingerprint256,
      next.fingerprint,
      'a new connection gets the new certificate',
    );
  });

  test('renewIfDue renews inside the renewal window only; the timer is armed for it', async (t) => {
    const dir = await tempDir();
    const { edge, edgeFullChain } = await pki();
    let now = Date.now();
    const m = await SecurityManager.start({
      dataDir: dir,
      hostname: 'gw.local',
      deviceId: 'gw1',
      edgeCa: { certPem: edgeFullChain, keyPem: edge.keyPem },
      now: () => now,
    });
    t.after(() => m.close());
    const id = m.identity;
    const due = m.renewalDueAt();
    assert.ok(due < id.notAfter.getTime() && due > now, 'due before expiry');
    assert.equal(await m.renewIfDue(), false);
    now = due + 1000;
    assert.equal(await m.renewIfDue(), true);
    assert.notEqual(m.identity.fingerprint, id.fingerprint);
  });

  test('a changed hostname and a changed Edge CA are applied to the listener without closing it', async (t) => {
    const dir = await tempDir();
    const a = await pki();
    const m = await SecurityManager.start({
      dataDir: dir,
      hostname: 'old.local',
      deviceId: 'gw1',
      edgeCa: { certPem: a.edgeFullChain, keyPem: a.edge.keyPem },
    });
    t.after(() => m.close());
    const { server, address, port, stop } = await echoServer(m);
    t.after(stop);
    const live = await connect(address, port, a.root.certPem, 'old.local');
    t.after(() => live.destroy());

    assert.equal(
      await m.update({ hostname: 'old.local', edgeCa: { certPem: a.edgeFullChain, keyPem: a.edge.keyPem } }),
      false,
      'nothing changed',
    );
    assert.equal(
      await m.update({ hostname: 'new.local', edgeCa: { certPem: a.edgeFullChain, keyPem: a.edge.keyPem } }),
      true,
    );
    const s1 = await connect(address, port, a.root.certPem, 'new.local');
    t.after(() => s1.destroy());
    assert.match(s1.getPeerX509Certificate()!.subject, /CN=new\.local/);

    const b = await pki();
    assert.equal(
      await m.update({ hostname: 'new.local', edgeCa: { certPem: b.edgeFullChain, keyPem: b.edge.keyPem } }),
      true,
    );
    const s2 = await connect(address, port, b.root.certPem, 'new.local');
    t.after(() => s2.destroy());
    // (node hands out the peer certificate object once per socket)
    const peer2 = s2.getPeerX509Certificate()!;
    assert.match(peer2.issuer, /CN=gw1\.ca/);
    assert.equal(peer2.fingerprint256, m.identity.fingerprint);
    await assert.rejects(
      connect(address, port, a.root.certPem, 'new.local'),
      /self.signed|unable to verify|certificate/i,
      'the old root no longer verifies it',
    );
    assert.equal(await echo(live, 'ping'), 'ping', 'the first connection survived both changes');
    assert.ok(server.listening);
  });

  test('without [edge_ca]: a self-signed quickstart Edge CA valid 90 days, kept and reused across restarts until near expiry', async () => {
    const dir = await tempDir();
    const m1 = await SecurityManager.start({ dataDir: dir, hostname: 'gw.local', deviceId: 'gw1' });
    const ca1 = new X509Certificate(m1.edgeCaPem);
    const server1 = m1.identity.fingerprint;
    m1.close();
    assert.ok(m1.usingQuickstartCa);
    assert.equal(ca1.subject, ca1.issuer, 'self-signed');
    assert.ok(ca1.ca);
    const days = (new Date(ca1.validTo).getTime() - new Date(ca1.validFrom).getTime()) / DAY;
    assert.ok(Math.abs(days - QUICKSTART_CA_DAYS) < 0.01, `valid ${days} days`);
    assert.equal(statSync(edgePkiPaths(dir).quickstartCaKey).mode & 0o777, 0o600);
    // The server certificate chains to it.
    assert.ok(new X509Certificate(splitPemCertificates(m1.identity.certPem)[0]).verify(ca1.publicKey));

    const m2 = await SecurityManager.start({ dataDir: dir, hostname: 'gw.local', deviceId: 'gw1' });
    m2.close();
    assert.equal(new X509Certificate(m2.edgeCaPem).fingerprint256, ca1.fingerprint256, 'the same CA after a restart');
    assert.equal(m2.identity.fingerprint, server1, 'and the same server certificate');

    // Near its end (clock 80 days ahead), a new quickstart CA replaces it.
    const later = Date.now() + 80 * DAY;
    const m3 = await SecurityManager.start({ dataDir: dir, hostname: 'gw.local', deviceId: 'gw1', now: () => later });
    m3.close();
    assert.notEqual(new X509Certificate(m3.edgeCaPem).fingerprint256, ca1.fingerprint256);
  });
});
