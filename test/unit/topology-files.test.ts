import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseEdgeConfig } from '../../src/edge/config.ts';
import { checkConfigFiles } from '../../src/edge/config-files.ts';
import { httpsPortSetting } from '../../src/edge/settings.ts';
import { ensureRootSet, issueEdgeCa, issueHubServerCert } from '../../src/topology/certs.ts';
import { renderGatewayConfig, writeGatewayConfig } from '../../src/topology/gateway-config.ts';
import { parsePrometheus, sumOf } from '../../src/topology/probe.ts';

test('the generated config.toml is accepted by the gateway config parser and its files check out', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-topology-files-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const certs = join(dir, 'certs');
  const { set, created } = await ensureRootSet(certs);
  assert.equal(created, true);
  const edgeCa = await issueEdgeCa(certs, set, 'gateway-l2');
  const file = join(dir, 'gw', 'config.toml');
  const cs = 'HostName=127.10.0.1;DeviceId=gateway-l2;SharedAccessKey=' + Buffer.alloc(32, 7).toString('base64');
  writeGatewayConfig(file, {
    hostname: '127.10.0.3',
    parentHostname: '127.10.0.2',
    trustBundleCert: set.rootCert,
    connectionString: cs,
    edgeCaCert: edgeCa.fullChain,
    edgeCaKey: edgeCa.key,
    source: 'topology.yaml',
  });
  assert.equal((await stat(file)).mode & 0o777, 0o600, 'the config holds a key: owner only');
  const text = renderGatewayConfig({
    hostname: '127.10.0.3',
    parentHostname: '127.10.0.2',
    trustBundleCert: set.rootCert,
    connectionString: cs,
    edgeCaCert: edgeCa.fullChain,
    edgeCaKey: edgeCa.key,
    source: 'x',
  });
  const { config, diagnostics } = parseEdgeConfig(text, file, join(dir, 'gw'));
  assert.deepEqual(
    diagnostics.filter((d) => d.level === 'error'),
    [],
  );
  assert.equal(config.hostname, '127.10.0.3');
  assert.equal(config.parentHostname, '127.10.0.2');
  assert.equal(config.trustBundleCert, set.rootCert);
  assert.equal(config.provisioning?.deviceId, 'gateway-l2');
  assert.deepEqual(config.edgeCa, { cert: edgeCa.fullChain, pk: edgeCa.key });
  const checked = checkConfigFiles(config).diagnostics;
  assert.deepEqual(
    checked.filter((d) => d.level === 'error'),
    [],
    JSON.stringify(checked),
  );

  // The layer-1 form has no parent_hostname at all, and no [strata] section unless a setting is given.
  const layer1 = renderGatewayConfig({
    hostname: '127.10.0.2',
    trustBundleCert: set.rootCert,
    connectionString: cs,
    edgeCaCert: edgeCa.fullChain,
    edgeCaKey: edgeCa.key,
    source: 'x',
  });
  assert.doesNotMatch(layer1, /parent_hostname/);
  assert.doesNotMatch(layer1, /\[strata\]/);
  // An upstream protocol lands under [strata], where the gateway reads it.
  const mqtt = renderGatewayConfig({
    hostname: '127.10.0.2',
    trustBundleCert: set.rootCert,
    connectionString: cs,
    edgeCaCert: edgeCa.fullChain,
    edgeCaKey: edgeCa.key,
    upstreamProtocol: 'Mqtt',
    source: 'x',
  });
  const parsed = parseEdgeConfig(mqtt, file, join(dir, 'gw'));
  assert.deepEqual(parsed.diagnostics, []);
  assert.equal(parsed.config.settings.upstream_protocol, 'Mqtt');
  assert.equal(parsed.config.hostname, '127.10.0.2');
  // An unprivileged topology: the gateway's own HTTPS port and its parent's, as the gateway reads them.
  const unprivilegedText = renderGatewayConfig({
    hostname: '127.10.0.2',
    trustBundleCert: set.rootCert,
    connectionString: cs,
    edgeCaCert: edgeCa.fullChain,
    edgeCaKey: edgeCa.key,
    httpsPort: 8443,
    source: 'x',
  });
  const unprivileged = parseEdgeConfig(unprivilegedText, file, join(dir, 'gw'));
  assert.deepEqual(unprivileged.diagnostics, []);
  assert.equal(httpsPortSetting(unprivileged.config, 'https_port'), 8443);
  assert.equal(httpsPortSetting(unprivileged.config, 'parent_https_port'), 8443);
  assert.equal(httpsPortSetting(parsed.config, 'https_port'), undefined);
  assert.throws(
    () => httpsPortSetting({ ...parsed.config, settings: { https_port: '443' } }, 'https_port'),
    /\[strata\] https_port must be a port number from 1 to 65535, got "443"/,
  );
});

test('one root for everything: the Edge CA and the hub server certificate verify against it with openssl; the root is kept on the next up', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-topology-certs-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const { set } = await ensureRootSet(dir);
  const edgeCa = await issueEdgeCa(dir, set, 'gw1');
  const server = await issueHubServerCert(dir, set, '127.10.0.1');
  const inter = join(dir, 'certs', 'azure-iot-test-only.intermediate.cert.pem');
  for (const [cert, extra] of [
    [join(dir, 'certs', 'iot-edge-device-ca-gw1.cert.pem'), []],
    [join(dir, 'certs', 'server-127.10.0.1.cert.pem'), ['-verify_ip', '127.10.0.1']],
  ] as const) {
    const outText = execFileSync('openssl', ['verify', '-CAfile', set.rootCert, '-untrusted', inter, ...extra, cert], {
      encoding: 'utf8',
    });
    assert.match(outText, /: OK/);
  }
  assert.match(edgeCa.fullChain, /iot-edge-device-ca-gw1-full-chain\.cert\.pem$/);
  assert.match(edgeCa.key, /private\/iot-edge-device-ca-gw1\.key\.pem$/);
  assert.match(server.fullChain, /server-127\.10\.0\.1-full-chain\.cert\.pem$/);
  assert.equal((await stat(edgeCa.key)).mode & 0o777, 0o600);
  const again = await ensureRootSet(dir);
  assert.equal(again.created, false);
  assert.equal(again.set.rootPem, set.rootPem);
});

test('Prometheus text: labels, sums, comments and junk lines', () => {
  const samples = parsePrometheus(
    [
      '# HELP edgehub_queue_length Messages waiting',
      '# TYPE edgehub_queue_length gauge',
      'edgehub_queue_length{endpoint="$upstream",priority="0"} 3',
      'edgehub_queue_length{endpoint="$upstream",priority="2000000000"} 4',
      'edgehub_connected_clients 2',
      'edgehub_messages_received_total{id="a\\"b"} 1e3 1700000000000',
      'garbage line here',
    ].join('\n'),
  );
  assert.equal(sumOf(samples, 'edgehub_queue_length'), 7);
  assert.equal(sumOf(samples, 'edgehub_connected_clients'), 2);
  assert.equal(sumOf(samples, 'edgehub_messages_received_total'), 1000);
  assert.equal(samples.find((s) => s.name === 'edgehub_messages_received_total')!.labels.id, 'a"b');
  assert.equal(sumOf(samples, 'edgehub_missing'), undefined);
});
