import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkConfigFiles } from '../../src/edge/config-files.ts';
import { parseEdgeConfig } from '../../src/edge/config.ts';
import {
  createRootCa,
  createIntermediateCa,
  createEdgeCa,
  createDeviceCert,
  fullChainPem,
  type IssuedCert,
} from '../../src/pki/index.ts';

let dir: string;
let root: IssuedCert;
let inter: IssuedCert;
let edge: IssuedCert;
let otherRoot: IssuedCert;

const put = (name: string, text: string) => {
  writeFileSync(join(dir, name), text);
  return `file://${join(dir, name)}`;
};

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'strata-cfg-'));
  root = await createRootCa({ commonName: 'test root', keyAlgorithm: 'ec' });
  inter = await createIntermediateCa({ commonName: 'test inter', issuer: root, keyAlgorithm: 'ec' });
  edge = await createEdgeCa({ commonName: 'edge ca gw1', issuer: inter, keyAlgorithm: 'ec' });
  otherRoot = await createRootCa({ commonName: 'other root', keyAlgorithm: 'ec' });
  put('root.pem', root.certPem);
  put('other-root.pem', otherRoot.certPem);
  put('edge-full-chain.pem', fullChainPem(edge.certPem, inter.certPem, root.certPem));
  put('edge.key.pem', edge.keyPem);
  put('inter.key.pem', inter.keyPem);
});
after(() => rmSync(dir, { recursive: true, force: true }));

function configWith(trust: string, cert: string, pk: string) {
  const text = `hostname = "gw1"\ntrust_bundle_cert = "file://${join(dir, trust)}"\n\n[edge_ca]\ncert = "file://${join(dir, cert)}"\npk = "file://${join(dir, pk)}"\n`;
  return parseEdgeConfig(text).config;
}

test('a good Edge CA chaining to the trust bundle passes and is returned', () => {
  const { files, diagnostics } = checkConfigFiles(configWith('root.pem', 'edge-full-chain.pem', 'edge.key.pem'));
  assert.deepEqual(diagnostics, []);
  assert.ok(files.edgeCa?.certPem.includes('BEGIN CERTIFICATE'));
  assert.ok(files.trustBundlePem);
});

test('a missing file is named with a fix', () => {
  const { diagnostics } = checkConfigFiles(configWith('root.pem', 'nope.pem', 'edge.key.pem'));
  assert.equal(diagnostics.length, 1);
  assert.match(diagnostics[0].message, /nope\.pem/);
  assert.ok(diagnostics[0].fix);
});

test('a key that does not match the Edge CA certificate is refused', () => {
  const { diagnostics, files } = checkConfigFiles(configWith('root.pem', 'edge-full-chain.pem', 'inter.key.pem'));
  assert.match(diagnostics.map((d) => d.message).join('\n'), /does not belong to the certificate/);
  assert.equal(files.edgeCa, undefined);
});

test('an Edge CA that is not a CA is refused', async () => {
  const leaf = await createDeviceCert({ commonName: 'notaca', issuer: inter, keyAlgorithm: 'ec' });
  put('leaf.pem', fullChainPem(leaf.certPem, inter.certPem));
  put('leaf.key.pem', leaf.keyPem);
  const { diagnostics } = checkConfigFiles(configWith('root.pem', 'leaf.pem', 'leaf.key.pem'));
  assert.match(diagnostics.map((d) => d.message).join('\n'), /is not a CA certificate/);
});

test('an Edge CA that does not chain to the trust bundle is refused', () => {
  const { diagnostics } = checkConfigFiles(configWith('other-root.pem', 'edge-full-chain.pem', 'edge.key.pem'));
  assert.match(diagnostics.map((d) => d.message).join('\n'), /does not chain to the trust bundle/);
});

test('an expired Edge CA is refused', () => {
  const later = new Date(Date.now() + 5 * 365 * 86400_000);
  const { diagnostics } = checkConfigFiles(configWith('root.pem', 'edge-full-chain.pem', 'edge.key.pem'), later);
  assert.match(diagnostics.map((d) => d.message).join('\n'), /expired/);
});

test('a parent without a trust bundle is an error', () => {
  const { diagnostics } = checkConfigFiles(parseEdgeConfig('hostname = "gw2"\nparent_hostname = "gw1"\n').config);
  assert.match(diagnostics[0].message, /needs trust_bundle_cert/);
});
