/**
 * `strata edge check` run as the real CLI against a real `strata hub start` as the upstream (its
 * root CA is the trust bundle, its host name its loopback address) and against a real gateway
 * (`strata edge start`) as the parent of a lower layer: it passes on a correct configuration and
 * fails, naming the problem and what to do, for a trust bundle of another root, a server
 * certificate whose CN is not the hostname, an unreachable parent, a hostname of 64+ characters
 * and a top-level key written inside a section.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { CheckResult } from '../../src/edge/check/index.ts';
import { edgePkiPaths } from '../../src/edge/security-manager.ts';
import { hubPkiPaths } from '../../src/hub/tls.ts';
import { createEdgeCa, createRootCa, createServerCert, fullChainPem, type IssuedCert } from '../../src/pki/index.ts';
import { setupEdge, startGatewayProcess } from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { exec, type Exec } from '../helpers/tls.ts';

const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

let hub: HubProcess;
let dir: string;
let edgeCa: IssuedCert;
let caCertPath: string;
let caKeyPath: string;
let n = 0;
const cleanups: Array<() => unknown> = [];

before(async () => {
  hub = await startHubProcess();
  cleanups.push(() => hub.stop());
  dir = await mkdtemp(join(tmpdir(), 'strata-edge-check-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const root = { certPem: hub.caPem, keyPem: await readFile(hubPkiPaths(hub.dataDir).rootKey, 'utf8') };
  edgeCa = await createEdgeCa({ commonName: 'gw-check.ca', issuer: root });
  await mkdir(join(dir, 'certs', 'private'), { recursive: true });
  caCertPath = join(dir, 'certs', 'iot-edge-device-ca-gw-check-full-chain.cert.pem');
  caKeyPath = join(dir, 'certs', 'private', 'iot-edge-device-ca-gw-check.key.pem');
  await writeFile(caCertPath, fullChainPem(edgeCa.certPem, root.certPem));
  await writeFile(caKeyPath, edgeCa.keyPem, { mode: 0o600 });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

/** A config.toml as the seeds lay it out: top-level keys first, then the sections. */
async function writeConfig(o: {
  hostname: string;
  parent?: string;
  trust?: string;
  topInSection?: boolean;
}): Promise<string> {
  const trust = `trust_bundle_cert = "${pathToFileURL(o.trust ?? hub.caPath).href}"`;
  const lines = [
    `hostname = "${o.hostname}"`,
    ...(o.parent ? [`parent_hostname = "${o.parent}"`] : []),
    ...(o.topInSection ? [] : [trust]),
    '',
    '[provisioning]',
    'source = "manual"',
    `connection_string = "HostName=${hub.hostname};DeviceId=gw-check;SharedAccessKey=${Buffer.from('check-key').toString('base64')}"`,
    '',
    '[edge_ca]',
    `cert = "${pathToFileURL(caCertPath).href}"`,
    `pk = "${pathToFileURL(caKeyPath).href}"`,
    ...(o.topInSection ? [trust] : []),
    '',
  ];
  const path = join(dir, `config-${++n}.toml`);
  await writeFile(path, lines.join('\n'));
  return path;
}

function check(configPath: string, dataDir: string, ...extra: string[]): Promise<Exec> {
  return exec(process.execPath, [STRATA_BIN, 'edge', 'check', '--config', configPath, '--data', dataDir, ...extra], {
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn' },
    timeoutMs: 30_000,
  });
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function linesOf(out: Exec): string[] {
  return out.stdout.split('\n').filter((l) => /^(pass|warning|error|skipped)\s/.test(l));
}

test('passes (exit 0, only pass and warning) against a real hub as the parent, and as the hub upstream', async () => {
  const hostname = randomLoopback();
  for (const parent of [hub.address, undefined]) {
    const cfg = await writeConfig({ hostname, parent });
    const out = await check(cfg, join(dir, 'data-good'));
    assert.equal(out.code, 0, `${out.stdout}\n${out.stderr}`);
    const lines = linesOf(out);
    assert.ok(lines.length >= 10, out.stdout);
    for (const l of lines) assert.match(l, /^(pass|warning)\s/, out.stdout);
    for (const port of [8883, 5671, 443]) {
      assert.match(
        out.stdout,
        new RegExp(`^pass\\s+${parent ? 'parent' : 'IoT hub'} ${esc(hub.address)} answers on ${port} `, 'm'),
      );
    }

    const json = await check(cfg, join(dir, 'data-good'), '--json');
    assert.equal(json.code, 0, json.stderr);
    const results = JSON.parse(json.stdout) as CheckResult[];
    const byId = new Map(results.map((r) => [r.id, r]));
    for (const id of [
      'config-file',
      'hostname',
      'trust-bundle',
      'edge-ca',
      'edge-ca-cert',
      'edge-ca-chain',
      'clock',
      'upstream-8883',
      'upstream-5671',
      'upstream-443',
    ]) {
      assert.equal(byId.get(id)?.status, 'pass', `${id}: ${byId.get(id)?.detail}`);
    }
    assert.equal(byId.get('parent-hostname')?.status, parent ? 'pass' : 'skipped');
    for (const r of results) {
      assert.deepEqual(
        Object.keys(r).filter((k) => !['id', 'title', 'status', 'detail', 'fix'].includes(k)),
        [],
      );
      assert.ok(['pass', 'warning', 'skipped'].includes(r.status), `${r.id}: ${r.status} ${r.detail}`);
    }
  }
});

test('a trust bundle that does not match the parent fails on every port with "certificate not trusted"', async () => {
  // Same subject name as the hub's root, different key: the classic mix-up of two hierarchies.
  const other = await createRootCa({ commonName: 'Strata hub root CA', keyAlgorithm: 'ec' });
  const otherPath = join(dir, 'other-root.cert.pem');
  await writeFile(otherPath, other.certPem);
  const out = await check(
    await writeConfig({ hostname: randomLoopback(), parent: hub.address, trust: otherPath }),
    join(dir, 'data-trust'),
  );
  assert.equal(out.code, 1, out.stdout);
  for (const port of [8883, 5671, 443]) {
    assert.match(
      out.stdout,
      new RegExp(
        `^error\\s+parent ${esc(hub.address)} answers on ${port} .*: certificate not trusted \\(trust bundle does not match the parent\\): ${esc(hub.address)}:${port} presented "CN=${esc(hub.address)}"`,
        'm',
      ),
    );
  }
  assert.match(
    out.stdout,
    /^\s+what to do: Set trust_bundle_cert to the root CA that issued the parent's certificate chain/m,
  );
});

test('a server certificate whose CN is not the hostname fails the server certificate check', async () => {
  const hostname = randomLoopback();
  const dataDir = join(dir, 'data-cn');
  const paths = edgePkiPaths(dataDir);
  const wrong = await createServerCert({ hostname: 'wrong-gateway.example', extraNames: ['edgehub'], issuer: edgeCa });
  await mkdir(join(paths.dir, 'private'), { recursive: true });
  await writeFile(paths.serverCert, fullChainPem(wrong.certPem, edgeCa.certPem, hub.caPem));
  await writeFile(paths.serverKey, wrong.keyPem, { mode: 0o600 });
  const out = await check(await writeConfig({ hostname, parent: hub.address }), dataDir);
  assert.equal(out.code, 1, out.stdout);
  assert.match(
    out.stdout,
    new RegExp(
      `^error\\s+gateway's server certificate names the hostname \\(CN and SAN\\): .*its CN is "wrong-gateway\\.example", not the hostname "${esc(hostname)}"`,
      'm',
    ),
  );
  assert.match(
    out.stdout,
    /^\s+what to do: Start the gateway \(`strata edge start`\): it re-issues a server certificate for the configured hostname/m,
  );
  // Everything else about this configuration is fine.
  assert.equal(linesOf(out).filter((l) => l.startsWith('error')).length, 1, out.stdout);
});

test('an unreachable parent fails on 8883, 5671 and 443, quickly', async () => {
  const unused = randomLoopback();
  const started = Date.now();
  const out = await check(
    await writeConfig({ hostname: randomLoopback(), parent: unused }),
    join(dir, 'data-unreachable'),
  );
  assert.equal(out.code, 1, out.stdout);
  for (const port of [8883, 5671, 443]) {
    assert.match(
      out.stdout,
      new RegExp(
        `^error\\s+parent ${esc(unused)} answers on ${port} .*: connection refused: nothing listens on ${esc(unused)}:${port}$`,
        'm',
      ),
    );
  }
  assert.match(out.stdout, /^\s+what to do: Start the parent gateway/m);
  assert.ok(Date.now() - started < 15_000);
});

test('a hostname of 64 or more characters fails with its length', async () => {
  const long = `${'a'.repeat(60)}.example`;
  const out = await check(await writeConfig({ hostname: long, parent: hub.address }), join(dir, 'data-long'));
  assert.equal(out.code, 1, out.stdout);
  assert.match(
    out.stdout,
    /^error\s+hostname is valid \(RFC 1035 name or IP address, under 64 characters\): line 1: hostname "a{60}\.example" is 68 characters long; it must be shorter than 64$/m,
  );
  assert.match(out.stdout, /^\s+what to do: Set hostname at the top of config\.toml .*shorter than 64 characters/m);
});

test('a top-level key inside a section fails the config file check, naming the key, section and line', async () => {
  const out = await check(
    await writeConfig({ hostname: randomLoopback(), parent: hub.address, topInSection: true }),
    join(dir, 'data-section'),
  );
  assert.equal(out.code, 1, out.stdout);
  assert.match(out.stdout, /^error\s+config file is readable and well-formed: .*config-\d+\.toml:$/m);
  assert.match(
    out.stdout,
    /^\s+line 11: "trust_bundle_cert" is inside the section \[edge_ca\], so it is read as edge_ca\.trust_bundle_cert, not as the top-level setting$/m,
  );
  assert.match(out.stdout, /^\s+what to do: line 11: Move the line above the first section header \(line 4\)$/m);
});

test('a running gateway: its own check sees the served certificate; a lower layer passes against it as parent', async (t) => {
  const address = randomLoopback();
  const setup = await setupEdge(hub, { gatewayId: 'gw-check-l1', address, deploy: false });
  t.after(() => setup.cleanup());
  const gw = await startGatewayProcess({ configPath: setup.configPath, dataDir: setup.dataDir, address });
  t.after(() => gw.stop());

  const own = await check(setup.configPath, setup.dataDir, '--verbose');
  assert.equal(own.code, 0, own.stdout);
  assert.match(
    own.stdout,
    new RegExp(
      `^pass\\s+gateway's server certificate names the hostname \\(CN and SAN\\): served by the running gateway on ${esc(address)}:8883: CN "${esc(address)}", SAN .*IP Address:${esc(address)}`,
      'm',
    ),
  );

  const child = await check(await writeConfig({ hostname: randomLoopback(), parent: address }), join(dir, 'data-l2'));
  assert.equal(child.code, 0, child.stdout);
  for (const port of [8883, 5671, 443])
    assert.match(child.stdout, new RegExp(`^pass\\s+parent ${esc(address)} answers on ${port} `, 'm'));
});
