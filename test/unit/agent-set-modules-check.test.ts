/**
 * `strata hub set-modules` validates the whole manifest before applying it (issue 19): a
 * `$edgeAgent` module with a bad field is refused with the module and the field named, and
 * nothing is sent. The last test runs the real CLI against a hub that does not exist: it must
 * fail on the manifest, before it would try to connect.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readDeployment } from '../../src/cli/set-modules.ts';
import { UserError } from '../../src/util/errors.ts';
import { deploymentManifest } from '../helpers/edge.ts';

const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

function withModules(modules: Record<string, unknown>, patch: (d: Record<string, any>) => void = () => {}) {
  const m = deploymentManifest() as { modulesContent: Record<string, any> };
  const desired = m.modulesContent.$edgeAgent['properties.desired'];
  desired.modules = modules;
  patch(desired);
  return m;
}

const GOOD = {
  sensor: {
    type: 'docker',
    status: 'running',
    restartPolicy: 'always',
    settings: { image: 'sensor:1', createOptions: '{}' },
  },
  filter: {
    type: 'docker',
    status: 'running',
    restartPolicy: 'on-failure',
    startupOrder: 1,
    settings: { image: '$upstream:443/filter:1', createOptions: '{"HostConfig":', createOptions01: '{}}' },
  },
};

function tempFile(t: { after: (fn: () => void) => void }, doc: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'strata-set-modules-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'deployment.json');
  writeFileSync(file, JSON.stringify(doc));
  return file;
}

test('a manifest whose $edgeAgent modules are all good passes, $upstream and createOptions01 included', (t) => {
  const file = tempFile(t, withModules(GOOD));
  assert.deepEqual(readDeployment(file).modules, ['$edgeAgent', '$edgeHub']);
});

test('a bad $edgeAgent module is refused naming the module and the field', (t) => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    [
      'invalid createOptions JSON',
      { ...GOOD, filter: { ...GOOD.filter, settings: { image: 'f:1', createOptions: '{"HostConfig": ' } } },
      /module filter: settings\.createOptions: is not valid JSON/,
    ],
    [
      'unknown restartPolicy',
      { ...GOOD, sensor: { ...GOOD.sensor, restartPolicy: 'sometimes' } },
      /module sensor: restartPolicy: "sometimes"/,
    ],
    ['bad status', { ...GOOD, sensor: { ...GOOD.sensor, status: 'paused' } }, /module sensor: status: "paused"/],
    [
      'not a module identity',
      { ...GOOD, 'bad/name': GOOD.sensor },
      /module bad\/name: name: not a valid module identity/,
    ],
    [
      'missing image',
      { ...GOOD, sensor: { ...GOOD.sensor, settings: {} } },
      /module sensor: settings\.image: is missing/,
    ],
    [
      'unknown type',
      { ...GOOD, sensor: { ...GOOD.sensor, type: 'vm' } },
      /module sensor: type: "vm" is not a module type/,
    ],
    [
      'process without command',
      { ...GOOD, p: { type: 'process', settings: {} } },
      /module p: settings\.command: is missing/,
    ],
  ];
  for (const [what, modules, says] of cases) {
    const file = tempFile(t, withModules(modules));
    assert.throws(
      () => readDeployment(file),
      (e: unknown) =>
        e instanceof UserError &&
        /the \$edgeAgent part of .*deployment\.json is not a deployment the agent can run: /.test(e.message) &&
        says.test(e.message) &&
        e.hint === 'Fix the named fields; nothing was sent to the hub',
      what,
    );
  }
});

test('a $edgeAgent document that is not a deployment is refused naming the field', (t) => {
  const file = tempFile(
    t,
    withModules(GOOD, (d) => (d.schemaVersion = '3.0')),
  );
  assert.throws(
    () => readDeployment(file),
    /"properties\.desired"\.schemaVersion: schemaVersion "3\.0" is not supported/,
  );
  const empty = tempFile(t, { modulesContent: { $edgeAgent: { 'properties.desired': {} } } });
  assert.throws(
    () => readDeployment(empty),
    /"properties\.desired": is empty \(give schemaVersion, runtime and modules\)/,
  );
  const noDesired = tempFile(t, { modulesContent: { $edgeAgent: {} } });
  assert.throws(
    () => readDeployment(noDesired),
    /"properties\.desired": the \$edgeAgent desired properties are not an object/,
  );
});

test('the CLI refuses before connecting: exit 1, the module and field on stderr', async (t) => {
  const file = tempFile(t, withModules({ ...GOOD, sensor: { ...GOOD.sensor, restartPolicy: 'sometimes' } }));
  const r = await new Promise<{ code: number; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      [
        STRATA_BIN,
        'hub',
        'set-modules',
        '--device',
        'gw',
        '--content',
        file,
        '--hub-connection-string',
        'HostName=127.0.0.1:1;SharedAccessKeyName=iothubowner;SharedAccessKey=AAAA',
      ],
      { timeout: 60_000 },
      (err, _stdout, stderr) => resolve({ code: (err as { code?: number } | null)?.code ?? 0, stderr }),
    );
  });
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    /module sensor: restartPolicy: "sometimes" is not one of never, on-failure, on-unhealthy, always/,
  );
  assert.match(r.stderr, /nothing was sent to the hub/);
});
