import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { pathToFileURL } from 'node:url';
import {
  checkStorage,
  probeUpstream,
  runEdgeChecks,
  type CheckResult,
  type ProbeOutcome,
} from '../../src/edge/check/index.ts';
import { formatCheckResults } from '../../src/cli/edge-check.ts';
import { edgePkiPaths } from '../../src/edge/security-manager.ts';
import {
  createDeviceCert,
  createEdgeCa,
  createRootCa,
  createServerCert,
  fullChainPem,
  type IssuedCert,
} from '../../src/pki/index.ts';
import { randomLoopbackAddress } from '../helpers/tls.ts';

const DAY = 24 * 3600 * 1000;
let dir: string;
let root: IssuedCert;
let otherRoot: IssuedCert;
let edgeCa: IssuedCert;
let n = 0;

const fileUrl = (p: string) => pathToFileURL(p).href;

function put(name: string, text: string, mode = 0o644): string {
  const p = join(dir, name);
  writeFileSync(p, text, { mode });
  return p;
}

/** A config.toml from top-level lines and section text; returns its path. */
function config(top: string[], sections = ''): string {
  return put(`config-${++n}.toml`, `${top.join('\n')}\n\n${sections}`);
}

function find(results: CheckResult[], id: string): CheckResult {
  const r = results.find((x) => x.id === id);
  assert.ok(r, `no result "${id}" in ${results.map((x) => x.id).join(', ')}`);
  return r;
}

// The hub of these configs is a loopback address where nothing listens: upstream checks fail fast and stay local.
const HUB = randomLoopbackAddress();
const PROVISIONING = `[provisioning]\nsource = "manual"\nconnection_string = "HostName=${HUB};DeviceId=gw1;SharedAccessKey=aGVsbG8="\n`;

const messageOf = (o: ProbeOutcome): string => (o.kind === 'ok' ? '' : o.message);

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'strata-check-'));
  root = await createRootCa({ commonName: 'check test root', keyAlgorithm: 'ec' });
  otherRoot = await createRootCa({ commonName: 'check test root', keyAlgorithm: 'ec' });
  edgeCa = await createEdgeCa({ commonName: 'gw1.ca', issuer: root, keyAlgorithm: 'ec' });
  put('root.pem', root.certPem);
  put('other-root.pem', otherRoot.certPem);
  put('edge-ca-full-chain.pem', fullChainPem(edgeCa.certPem, root.certPem));
  put('edge-ca.key.pem', edgeCa.keyPem, 0o600);
});
after(() => rmSync(dir, { recursive: true, force: true }));

function edgeConfig(
  o: { hostname?: string; parent?: string; trust?: string; cert?: string; key?: string; extraTop?: string[] } = {},
): string {
  return config(
    [
      ...(o.hostname === undefined ? ['hostname = "gw1.example"'] : [`hostname = "${o.hostname}"`]),
      ...(o.parent ? [`parent_hostname = "${o.parent}"`] : []),
      `trust_bundle_cert = "${fileUrl(join(dir, o.trust ?? 'root.pem'))}"`,
      ...(o.extraTop ?? []),
    ],
    `${PROVISIONING}\n[edge_ca]\ncert = "${fileUrl(join(dir, o.cert ?? 'edge-ca-full-chain.pem'))}"\npk = "${fileUrl(join(dir, o.key ?? 'edge-ca.key.pem'))}"\n`,
  );
}

const quick = { timeoutMs: 300 };

test('a top-level key inside a section is an error naming the line, the section and the fix', async () => {
  const path = config(
    ['hostname = "gw1.example"'],
    `${PROVISIONING}\n[edge_ca]\ncert = "x.pem"\npk = "y.pem"\ntrust_bundle_cert = "${fileUrl(join(dir, 'root.pem'))}"\n`,
  );
  const results = await runEdgeChecks({ configPath: path, dataDir: join(dir, 'data-a'), ...quick });
  const file = find(results, 'config-file');
  assert.equal(file.status, 'error');
  assert.match(
    file.detail,
    /line 10: "trust_bundle_cert" is inside the section \[edge_ca\], so it is read as edge_ca\.trust_bundle_cert/,
  );
  assert.match(file.fix ?? '', /Move the line above the first section header \(line 3\)/);
  // Nothing that needs the configuration pretends to have checked it.
  for (const id of ['trust-bundle', 'edge-ca', 'upstream-8883', 'upstream-5671', 'upstream-443'])
    assert.equal(find(results, id).status, 'skipped', id);
});

test('a TOML syntax error is reported with its line; a missing file is named', async () => {
  const bad = put('bad.toml', 'hostname = "gw1"\n[provisioning\nsource = "manual"\n');
  const r = find(await runEdgeChecks({ configPath: bad, ...quick }), 'config-file');
  assert.equal(r.status, 'error');
  assert.match(r.detail, /line 2: not valid TOML/);
  const unquoted = put('unquoted.toml', 'hostname = gw1\n');
  const u = await runEdgeChecks({ configPath: unquoted, ...quick });
  assert.equal(find(u, 'config-file').status, 'error');
  assert.match(find(u, 'config-file').detail, /line 1: not valid TOML/);
  assert.equal(find(u, 'hostname').status, 'skipped');
  const missing = find(await runEdgeChecks({ configPath: join(dir, 'nope.toml'), ...quick }), 'config-file');
  assert.equal(missing.status, 'error');
  assert.match(missing.detail, /config file not found: .*nope\.toml/);
});

test('hostname: 64 characters or more is an error; 63 passes; the other checks still run', async () => {
  const long = `${'a'.repeat(56)}.example`; // 64 characters
  const results = await runEdgeChecks({
    configPath: edgeConfig({ hostname: long }),
    dataDir: join(dir, 'data-b'),
    ...quick,
  });
  const h = find(results, 'hostname');
  assert.equal(h.status, 'error');
  assert.match(h.detail, /line 1: hostname "a+\.example" is 64 characters long; it must be shorter than 64/);
  assert.match(h.fix ?? '', /shorter than 64/);
  assert.equal(find(results, 'config-file').status, 'pass');
  assert.equal(find(results, 'edge-ca-chain').status, 'pass');

  const ok = find(
    await runEdgeChecks({ configPath: edgeConfig({ hostname: `${'a'.repeat(55)}.example` }), ...quick }),
    'hostname',
  );
  assert.equal(ok.status, 'pass');
});

test('hostname: labels outside RFC 1035 are refused; an IP address is fine', async () => {
  const bad = find(await runEdgeChecks({ configPath: edgeConfig({ hostname: 'gw_1.example' }), ...quick }), 'hostname');
  assert.equal(bad.status, 'error');
  assert.match(bad.detail, /label "gw_1"/);
  const ip = find(await runEdgeChecks({ configPath: edgeConfig({ hostname: '10.0.0.4' }), ...quick }), 'hostname');
  assert.equal(ip.status, 'pass');
  assert.match(ip.detail, /IP address/);
});

test('parent_hostname: an invalid one is an error and no connection is attempted', async () => {
  const results = await runEdgeChecks({ configPath: edgeConfig({ parent: 'parent..example' }), ...quick });
  const p = find(results, 'parent-hostname');
  assert.equal(p.status, 'error');
  assert.match(p.detail, /parent_hostname "parent\.\.example" has an empty label/);
  for (const port of [8883, 5671, 443]) {
    const u = find(results, `upstream-${port}`);
    assert.equal(u.status, 'skipped');
    assert.match(u.detail, /parent_hostname is refused/);
  }
});

test('hostname and parent_hostname mixing an IP address and a name is a warning', async () => {
  const parent = randomLoopbackAddress();
  const mixed = find(
    await runEdgeChecks({ configPath: edgeConfig({ hostname: 'gw.example', parent }), ...quick }),
    'hostname-pattern',
  );
  assert.equal(mixed.status, 'warning');
  assert.match(
    mixed.detail,
    new RegExp(`"gw\\.example" is a name but parent_hostname "${parent.replace(/\./g, '\\.')}" is an IP address`),
  );
  assert.ok(mixed.fix);
  const same = find(
    await runEdgeChecks({ configPath: edgeConfig({ hostname: '10.0.0.5', parent }), ...quick }),
    'hostname-pattern',
  );
  assert.equal(same.status, 'pass');
});

test('Edge CA: present, matching, in date and chaining to the trust bundle passes', async () => {
  const results = await runEdgeChecks({ configPath: edgeConfig(), ...quick });
  for (const id of [
    'config-file',
    'hostname',
    'provisioning',
    'trust-bundle',
    'edge-ca',
    'edge-ca-cert',
    'edge-ca-chain',
  ]) {
    assert.equal(find(results, id).status, 'pass', `${id}: ${find(results, id).detail}`);
  }
  assert.match(find(results, 'edge-ca-chain').detail, /"CN=gw1\.ca" -> "CN=check test root"/);
});

test('Edge CA: a key of another certificate, a non-CA, and a trust bundle of another root are errors', async () => {
  const otherKey = await createEdgeCa({ commonName: 'unrelated', issuer: root, keyAlgorithm: 'ec' });
  put('unrelated.key.pem', otherKey.keyPem, 0o600);
  const wrongKey = find(
    await runEdgeChecks({ configPath: edgeConfig({ key: 'unrelated.key.pem' }), ...quick }),
    'edge-ca-cert',
  );
  assert.equal(wrongKey.status, 'error');
  assert.match(wrongKey.detail, /unrelated\.key\.pem is not the key of/);

  const device = await createDeviceCert({ commonName: 'not-a-ca', issuer: root, keyAlgorithm: 'ec' });
  put('device.pem', device.certPem);
  put('device.key.pem', device.keyPem, 0o600);
  const notCa = find(
    await runEdgeChecks({ configPath: edgeConfig({ cert: 'device.pem', key: 'device.key.pem' }), ...quick }),
    'edge-ca-cert',
  );
  assert.equal(notCa.status, 'error');
  assert.match(notCa.detail, /is not a CA certificate/);

  const chain = find(
    await runEdgeChecks({ configPath: edgeConfig({ trust: 'other-root.pem' }), ...quick }),
    'edge-ca-chain',
  );
  assert.equal(chain.status, 'error');
  assert.match(chain.detail, /does not chain to .*other-root\.pem: /);
});

test('Edge CA: expiring within 7 days is a warning, expired is an error; a key readable by others is a warning', async () => {
  const soon = await createEdgeCa({ commonName: 'soon.ca', issuer: root, keyAlgorithm: 'ec', days: 3 });
  put('soon.pem', fullChainPem(soon.certPem, root.certPem));
  put('soon.key.pem', soon.keyPem, 0o600);
  const s = find(
    await runEdgeChecks({ configPath: edgeConfig({ cert: 'soon.pem', key: 'soon.key.pem' }), ...quick }),
    'edge-ca-cert',
  );
  assert.equal(s.status, 'warning');
  assert.match(s.detail, /expires in 3 days/);

  const old = await createEdgeCa({
    commonName: 'old.ca',
    issuer: root,
    keyAlgorithm: 'ec',
    days: 1,
    validFrom: new Date(Date.now() - 10 * DAY),
  });
  put('old.pem', fullChainPem(old.certPem, root.certPem));
  put('old.key.pem', old.keyPem, 0o644);
  const o = find(
    await runEdgeChecks({ configPath: edgeConfig({ cert: 'old.pem', key: 'old.key.pem' }), ...quick }),
    'edge-ca-cert',
  );
  assert.equal(o.status, 'error');
  assert.match(o.detail, /expired on/);
  assert.match(o.detail, /can be read by other users \(mode 644\)/);
});

test('no [edge_ca] is a warning about the 90-day quickstart Edge CA', async () => {
  const path = config(
    ['hostname = "gw1.example"', `trust_bundle_cert = "${fileUrl(join(dir, 'root.pem'))}"`],
    PROVISIONING,
  );
  const results = await runEdgeChecks({ configPath: path, ...quick });
  const ca = find(results, 'edge-ca');
  assert.equal(ca.status, 'warning');
  assert.match(ca.detail, /quickstart Edge CA .*valid 90 days/);
  assert.match(ca.fix ?? '', /\[edge_ca\]/);
  assert.equal(find(results, 'edge-ca-chain').status, 'skipped');
});

test('server certificate in the data directory: CN and SAN must be the hostname', async () => {
  const dataDir = join(dir, 'data-server');
  const paths = edgePkiPaths(dataDir);
  mkdirSync(join(paths.dir, 'private'), { recursive: true });
  const cfg = edgeConfig({ hostname: 'gw1.example' });

  const none = find(await runEdgeChecks({ configPath: cfg, dataDir, ...quick }), 'server-cert');
  assert.equal(none.status, 'skipped');
  assert.match(none.detail, /has not run/);

  const good = await createServerCert({
    hostname: 'gw1.example',
    extraNames: ['edgehub'],
    issuer: edgeCa,
    keyAlgorithm: 'ec',
  });
  writeFileSync(paths.serverCert, fullChainPem(good.certPem, edgeCa.certPem, root.certPem));
  const pass = find(await runEdgeChecks({ configPath: cfg, dataDir, ...quick }), 'server-cert');
  assert.equal(pass.status, 'pass', pass.detail);

  const wrong = await createServerCert({
    hostname: 'other-gateway.example',
    extraNames: ['edgehub'],
    issuer: edgeCa,
    keyAlgorithm: 'ec',
  });
  writeFileSync(paths.serverCert, fullChainPem(wrong.certPem, edgeCa.certPem));
  const fail = find(await runEdgeChecks({ configPath: cfg, dataDir, ...quick }), 'server-cert');
  assert.equal(fail.status, 'error');
  assert.match(fail.detail, /its CN is "other-gateway\.example", not the hostname "gw1\.example"/);
  assert.match(fail.detail, /no subject alternative name matches "gw1\.example"/);
  assert.match(fail.fix ?? '', /strata edge start/);

  const noEdgehub = await createServerCert({ hostname: 'gw1.example', issuer: edgeCa, keyAlgorithm: 'ec' });
  writeFileSync(paths.serverCert, fullChainPem(noEdgehub.certPem, edgeCa.certPem));
  const warn = find(await runEdgeChecks({ configPath: cfg, dataDir, ...quick }), 'server-cert');
  assert.equal(warn.status, 'warning');
  assert.match(warn.detail, /lacks the DNS name "edgehub"/);
});

test('storage: under the temp directory is a warning; an unwritable place is an error', () => {
  const t = checkStorage(join(dir, 'data-storage'), '');
  assert.equal(t.status, 'warning');
  assert.match(t.detail, /may be lost on reboot/);
  assert.match(t.detail, /does not exist yet/);
  const ro = checkStorage('/proc/strata-check-data', '');
  assert.equal(ro.status, 'error');
  assert.match(ro.detail, /cannot write in \/proc/);
  assert.equal(checkStorage(undefined, '').status, 'skipped');
});

// ---------------------------------------------------------------------------------------------
// Upstream: real TLS listeners on the standard ports of a loopback address of this test's own.

interface Upstream {
  address: string;
  close(): Promise<void>;
}

async function listen(server: net.Server, address: string, port: number): Promise<void> {
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(port, address, () => res());
  });
}

async function startUpstreamAt(
  address: string,
  cert: IssuedCert,
  chain: string,
  opts: { date?: () => string } = {},
): Promise<Upstream> {
  const creds = { cert: fullChainPem(cert.certPem, chain), key: cert.keyPem };
  const servers: net.Server[] = [];
  const sockets = new Set<net.Socket>();
  const track = (s: net.Server) => {
    servers.push(s);
    s.on('connection', (sock: net.Socket) => {
      sockets.add(sock);
      sock.once('close', () => sockets.delete(sock));
    });
  };
  const close = async () => {
    for (const sock of sockets) sock.destroy();
    for (const s of servers) s.close();
  };
  try {
    for (const port of [8883, 5671]) {
      const s = tls.createServer(creds, (sock) => sock.on('error', () => {}));
      track(s);
      await listen(s, address, port);
    }
    const https: HttpsServer = createHttpsServer(creds, (_req, res) => {
      if (opts.date) res.setHeader('Date', opts.date());
      res.statusCode = 404;
      res.end();
    });
    track(https);
    await listen(https, address, 443);
  } catch (err) {
    await close();
    throw err;
  }
  return { address, close };
}

test('upstream on 8883, 5671 and 443 with a trusted certificate for its address passes, clocks agree', async (t) => {
  const parentCa = await createEdgeCa({ commonName: 'parent.ca', issuer: root, keyAlgorithm: 'ec' });
  const address = randomLoopbackAddress();
  const serverCert = await createServerCert({ hostname: address, issuer: parentCa, keyAlgorithm: 'ec' });
  const up = await startUpstreamAt(address, serverCert, parentCa.certPem);
  t.after(() => up.close());
  const results = await runEdgeChecks({
    configPath: edgeConfig({ hostname: randomLoopbackAddress(), parent: up.address }),
    dataDir: join(dir, 'data-up'),
  });
  for (const port of [8883, 5671, 443]) {
    const r = find(results, `upstream-${port}`);
    assert.equal(r.status, 'pass', r.detail);
    assert.match(r.title, new RegExp(`parent ${up.address.replace(/\./g, '\\.')} answers on ${port}`));
  }
  const clock = find(results, 'clock');
  assert.equal(clock.status, 'pass', clock.detail);
});

test("a clock 10 minutes off the upstream's Date header is a warning", async (t) => {
  const address = randomLoopbackAddress();
  const serverCert = await createServerCert({ hostname: address, issuer: edgeCa, keyAlgorithm: 'ec' });
  const up = await startUpstreamAt(address, serverCert, edgeCa.certPem, {
    date: () => new Date(Date.now() + 10 * 60 * 1000).toUTCString(),
  });
  t.after(() => up.close());
  const clock = find(
    await runEdgeChecks({ configPath: edgeConfig({ hostname: randomLoopbackAddress(), parent: address }) }),
    'clock',
  );
  assert.equal(clock.status, 'warning');
  assert.match(clock.detail, /this host's clock is 10 minutes behind/);
  assert.match(clock.fix ?? '', /NTP/);
});

test('probe: a certificate from another root is "not trusted", another name is "host name mismatch", an old one is "out of date"', async (t) => {
  const address = randomLoopbackAddress();
  const foreignCa = await createEdgeCa({ commonName: 'foreign.ca', issuer: otherRoot, keyAlgorithm: 'ec' });
  const foreign = await createServerCert({ hostname: address, issuer: foreignCa, keyAlgorithm: 'ec' });
  const up = await startUpstreamAt(address, foreign, fullChainPem(foreignCa.certPem, otherRoot.certPem));
  t.after(() => up.close());
  const untrusted = await probeUpstream(address, 8883, [root.certPem], 2000);
  assert.equal(untrusted.kind, 'not-trusted');
  assert.match(
    messageOf(untrusted),
    /certificate not trusted \(trust bundle does not match the parent\): .*presented "CN=/,
  );

  const other = randomLoopbackAddress();
  const misnamed = await createServerCert({ hostname: '10.9.9.9', issuer: edgeCa, keyAlgorithm: 'ec' });
  const up2 = await startUpstreamAt(other, misnamed, edgeCa.certPem);
  t.after(() => up2.close());
  const mismatch = await probeUpstream(other, 5671, [root.certPem], 2000);
  assert.equal(mismatch.kind, 'name-mismatch');
  assert.match(messageOf(mismatch), /host name mismatch: .*SAN IP Address:10\.9\.9\.9.*not valid for/);

  const third = randomLoopbackAddress();
  const expired = await createServerCert({
    hostname: third,
    issuer: edgeCa,
    keyAlgorithm: 'ec',
    days: 1,
    validFrom: new Date(Date.now() - 5 * DAY),
  });
  const up3 = await startUpstreamAt(third, expired, edgeCa.certPem);
  t.after(() => up3.close());
  const old = await probeUpstream(third, 443, [root.certPem], 2000);
  assert.equal(old.kind, 'out-of-date');
  assert.match(messageOf(old), /expired/);
});

test('probe: nothing listening is "refused", a silent listener is "timeout"', async (t) => {
  const refused = await probeUpstream(randomLoopbackAddress(), 8883, [root.certPem], 2000);
  assert.equal(refused.kind, 'refused');
  assert.match(messageOf(refused), /connection refused: nothing listens on/);

  const address = randomLoopbackAddress();
  const held = new Set<net.Socket>();
  const silent = net.createServer((sock) => {
    held.add(sock);
    sock.on('error', () => {});
  });
  await listen(silent, address, 5671);
  t.after(() => {
    for (const s of held) s.destroy();
    silent.close();
  });
  const started = Date.now();
  const timeout = await probeUpstream(address, 5671, [root.certPem], 300);
  assert.equal(timeout.kind, 'timeout');
  assert.match(messageOf(timeout), /accepted the connection but did not complete a TLS handshake within 300 ms/);
  assert.ok(Date.now() - started < 2000);
});

test('the printed form: one line per check, what to do under failures, skipped only with --verbose', () => {
  const results: CheckResult[] = [
    { id: 'a', title: 'first thing', status: 'pass', detail: 'seen a' },
    { id: 'b', title: 'second thing', status: 'error', detail: 'broken b', fix: 'mend b' },
    { id: 'c', title: 'third thing', status: 'warning', detail: 'odd c', fix: 'look at c' },
    { id: 'd', title: 'fourth thing', status: 'skipped', detail: 'not applicable' },
  ];
  const lines = formatCheckResults(results);
  assert.deepEqual(lines.slice(0, 5), [
    'pass     first thing',
    'error    second thing: broken b',
    '         what to do: mend b',
    'warning  third thing: odd c',
    '         what to do: look at c',
  ]);
  assert.ok(!lines.some((l) => l.includes('fourth thing')));
  assert.match(lines.at(-1)!, /1 passed, 1 warning\(s\), 1 error\(s\), 1 skipped \(--verbose lists them\)/);
  const verbose = formatCheckResults(results, true);
  assert.ok(verbose.includes('pass     first thing: seen a'));
  assert.ok(verbose.includes('skipped  fourth thing: not applicable'));
});
