import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseEdgeConfig, ConfigError, formatDiagnostic, fileUriToPath } from '../../src/edge/config.ts';
import { checkHostname } from '../../src/edge/hostname.ts';

// The seeds' example parent and child files, as written there.
const seedParent = `hostname = "parent-vm.westus.cloudapp.azure.com"
trust_bundle_cert = "file:///var/secrets/azure-iot-test-only.root.ca.cert.pem"

[edge_ca]
cert = "file:///var/secrets/iot-edge-device-ca-gateway-full-chain.cert.pem"
pk = "file:///var/secrets/iot-edge-device-ca-gateway.key.pem"
`;
const seedChild = `parent_hostname = "parent-vm.westus.cloudapp.azure.com"
trust_bundle_cert = "file:///var/secrets/azure-iot-test-only.root.ca.cert.pem"

[edge_ca]
cert = "file:///var/secrets/iot-edge-device-downstream-full-chain.cert.pem"
pk = "file:///var/secrets/iot-edge-device-downstream.key.pem"
`;

function errorsOf(text: string): string[] {
  try {
    parseEdgeConfig(text, 'config.toml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.diagnostics.filter((d) => d.level === 'error').map((d) => formatDiagnostic('config.toml', d));
  }
  assert.fail('expected a ConfigError');
}

test("the seeds' parent config is accepted as written", () => {
  const { config } = parseEdgeConfig(seedParent);
  assert.equal(config.hostname, 'parent-vm.westus.cloudapp.azure.com');
  assert.equal(config.trustBundleCert, '/var/secrets/azure-iot-test-only.root.ca.cert.pem');
  assert.deepEqual(config.edgeCa, {
    cert: '/var/secrets/iot-edge-device-ca-gateway-full-chain.cert.pem',
    pk: '/var/secrets/iot-edge-device-ca-gateway.key.pem',
  });
  assert.equal(config.parentHostname, undefined);
});

test("the seeds' child config is accepted, with the machine name as hostname and a warning", () => {
  const { config, diagnostics } = parseEdgeConfig(seedChild);
  assert.equal(config.parentHostname, 'parent-vm.westus.cloudapp.azure.com');
  assert.equal(config.hostnameFromFile, false);
  assert.ok(diagnostics.some((d) => d.level === 'warning' && /no hostname set/.test(d.message)));
});

test('the seeds\' `image: "..."` under [agent.config] is read, with a warning naming the line', () => {
  const text = `hostname = "gw1"\n\n[agent]\nname = "edgeAgent"\ntype = "docker"\n\n[agent.config]\nimage: "parent:443/azureiotedge-agent:1.2"\n`;
  const { config, diagnostics } = parseEdgeConfig(text);
  assert.equal(config.agent?.image, 'parent:443/azureiotedge-agent:1.2');
  assert.equal(config.agent?.name, 'edgeAgent');
  const w = diagnostics.find((d) => d.level === 'warning' && d.line === 8);
  assert.ok(w, 'warning on line 8');
});

test('a top-level key after a section header is an error naming its line and the fix', () => {
  const text = `trust_bundle_cert = "file:///r.pem"\n\n[edge_ca]\ncert = "file:///c.pem"\npk = "file:///k.pem"\nhostname = "gw1"\n`;
  const errs = errorsOf(text);
  assert.equal(errs.length, 1);
  assert.match(errs[0], /line 6: error: "hostname" is inside the section \[edge_ca\]/);
  assert.match(errs[0], /above the first section header \(line 3\)/);
});

test('hostname of 64 characters or more is refused; 63 is fine', () => {
  const long = 'a'.repeat(60) + '.com'; // 64
  assert.match(
    errorsOf(`hostname = "${long}"\n`)[0],
    /line 1: error: hostname ".*" is 64 characters long; it must be shorter than 64/,
  );
  const ok = 'a'.repeat(59) + '.com';
  assert.equal(parseEdgeConfig(`hostname = "${ok}"\n`).config.hostname, ok);
});

test('invalid host names are refused with the reason', () => {
  assert.match(errorsOf('hostname = "bad_name.local"\n')[0], /characters other than letters, digits and hyphens/);
  assert.match(errorsOf('hostname = "-x.local"\n')[0], /starting or ending with a hyphen/);
  assert.match(errorsOf('hostname = "a..b"\n')[0], /empty label/);
  assert.match(errorsOf('hostname = "gw"\nparent_hostname = "x y"\n')[0], /line 2: error: parent_hostname/);
});

test('mixing an IP hostname with an FQDN parent is a warning', () => {
  const { diagnostics } = parseEdgeConfig('hostname = "10.0.0.2"\nparent_hostname = "parent.local"\n');
  assert.ok(diagnostics.some((d) => d.level === 'warning' && /mix an IP address and a domain name/.test(d.message)));
});

test('broken TOML names its line', () => {
  assert.match(errorsOf('hostname = "gw"\n[edge_ca\ncert = 1\n')[0], /line 2: error: not valid TOML/);
});

test('provisioning: connection string, sas and x509 forms', () => {
  const cs = parseEdgeConfig(
    'hostname = "gw"\n[provisioning]\nsource = "manual"\nconnection_string = "HostName=hub.local;DeviceId=gw1;SharedAccessKey=abc="\n',
  ).config;
  assert.deepEqual(cs.provisioning, {
    source: 'manual',
    connectionString: 'HostName=hub.local;DeviceId=gw1;SharedAccessKey=abc=',
    iothubHostname: 'hub.local',
    deviceId: 'gw1',
    authentication: { method: 'sas', deviceIdPk: 'abc=' },
  });
  const sas = parseEdgeConfig(
    'hostname = "gw"\n[provisioning]\nsource = "manual"\niothub_hostname = "hub.local"\ndevice_id = "gw1"\n[provisioning.authentication]\nmethod = "sas"\ndevice_id_pk = { value = "a2V5" }\n',
  ).config;
  assert.deepEqual(sas.provisioning?.authentication, { method: 'sas', deviceIdPk: 'a2V5' });
  const x = parseEdgeConfig(
    'hostname = "gw"\n[provisioning]\nsource = "manual"\niothub_hostname = "hub.local"\ndevice_id = "gw1"\n[provisioning.authentication]\nmethod = "x509"\nidentity_cert = "file:///c.pem"\nidentity_pk = "file:///k.pem"\n',
  ).config;
  assert.deepEqual(x.provisioning?.authentication, { method: 'x509', identityCert: '/c.pem', identityPk: '/k.pem' });
  assert.match(errorsOf('hostname = "gw"\n[provisioning]\nsource = "dps"\n')[0], /source "dps" is not supported/);
  assert.match(
    errorsOf('hostname = "gw"\n[provisioning]\nsource = "manual"\nconnection_string = "HostName=h"\n')[0],
    /must carry HostName, DeviceId and SharedAccessKey/,
  );
});

test('[edge_ca] with only one of cert and pk is an error; no [edge_ca] means quickstart', () => {
  assert.match(errorsOf('hostname = "gw"\n[edge_ca]\ncert = "file:///c.pem"\n')[0], /needs both cert and pk/);
  assert.equal(parseEdgeConfig('hostname = "gw"\n').config.edgeCa, undefined);
});

test('file URIs and relative paths', () => {
  assert.equal(fileUriToPath('file:///var/x.pem', '/etc'), '/var/x.pem');
  assert.equal(fileUriToPath('certs/x.pem', '/etc/strata'), '/etc/strata/certs/x.pem');
  assert.throws(() => fileUriToPath('https://x/y.pem', '/'), /not a file URI/);
});

test('host name checks', () => {
  assert.equal(checkHostname('127.0.0.2'), undefined);
  assert.equal(checkHostname('::1'), undefined);
  assert.equal(checkHostname('edge-1.plant.local'), undefined);
  assert.ok(checkHostname(''));
});

test('[moby_runtime] uri: unix and tcp accepted; a missing or foreign uri is an error naming its line', () => {
  const withMoby = (body: string) => `hostname = "gw.local"\n\n[moby_runtime]\n${body}\n`;
  assert.deepEqual(parseEdgeConfig(withMoby('uri = "unix:///var/run/docker.sock"')).config.mobyRuntime, {
    uri: 'unix:///var/run/docker.sock',
  });
  assert.deepEqual(parseEdgeConfig(withMoby('uri = "tcp://127.0.0.1:2375"')).config.mobyRuntime, {
    uri: 'tcp://127.0.0.1:2375',
  });
  assert.equal(parseEdgeConfig('hostname = "gw.local"\n').config.mobyRuntime, undefined);
  assert.match(
    errorsOf(withMoby('network = "azure-iot-edge"')).join('\n'),
    /config\.toml line 3: error: \[moby_runtime\] needs uri/,
  );
  assert.match(errorsOf(withMoby('uri = "npipe://./pipe/docker_engine"')).join('\n'), /npipe is not supported/);
  assert.match(errorsOf(withMoby('uri = 5')).join('\n'), /needs uri, a string/);
});
