import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { before, describe, test } from 'node:test';
import { isEngineError } from '../../src/model/errors.ts';
import type { EngineErrorCode } from '../../src/model/errors.ts';
import type { RegistryIdentity } from '../../src/model/identity.ts';
import { authenticate, type AuthenticateDeps } from '../../src/identity/authenticate.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import {
  createDeviceCert,
  createIntermediateCa,
  createRootCa,
  thumbprints,
  type IssuedCert,
} from '../../src/pki/index.ts';

const HOST = 'hub.example.test';
const K1 = Buffer.alloc(32, 1).toString('base64');
const K2 = Buffer.alloc(32, 2).toString('base64');
const KM = Buffer.alloc(32, 3).toString('base64');
const soon = () => Math.floor(Date.now() / 1000) + 600;

const devices = new Map<string, RegistryIdentity>();
const modules = new Map<string, RegistryIdentity>();
let cas: X509Certificate[] = [];
const deps: AuthenticateDeps = {
  getDevice: (d) => devices.get(d),
  getModule: (d, m) => modules.get(`${d}/${m}`),
  hostNames: [HOST],
  trustedCas: () => cas,
};

function sas(id: string, extra: Partial<RegistryIdentity> = {}): void {
  devices.set(id, {
    deviceId: id,
    status: 'enabled',
    generationId: `g-${id}`,
    authentication: { type: 'sas', symmetricKey: { primaryKey: K1, secondaryKey: K2 } },
    ...extra,
  });
}
const refused = (code: EngineErrorCode, text?: RegExp) => (err: unknown) =>
  isEngineError(err, code) && (!text || text.test((err as Error).message));

describe('SAS', () => {
  before(() => {
    sas('dev');
    sas('off', { status: 'disabled' });
    modules.set('dev/mod', {
      deviceId: 'dev',
      moduleId: 'mod',
      authentication: { type: 'sas', symmetricKey: { primaryKey: KM, secondaryKey: KM } },
    });
  });

  test('a device token signed with the primary or the secondary key', async () => {
    for (const key of [K1, K2]) {
      const r = await authenticate(
        { deviceId: 'dev', sasToken: createSasToken(`${HOST}/devices/dev`, key, soon()) },
        deps,
      );
      assert.deepEqual(r.identity, { deviceId: 'dev' });
      assert.equal(r.kind, 'sas');
      assert.equal(r.generationId, 'g-dev');
      assert.ok(r.expiresAt! > Date.now());
      assert.deepEqual(JSON.parse(r.authMethod), {
        scope: 'device',
        type: 'sas',
        issuer: 'iothub',
        acceptingIpFilterRule: null,
      });
    }
    // Host names compare case-insensitively; fields in any order.
    const t = createSasToken(`${HOST.toUpperCase()}/devices/dev`, K1, soon());
    const reordered = `SharedAccessSignature ${t.slice('SharedAccessSignature '.length).split('&').reverse().join('&')}`;
    assert.equal((await authenticate({ deviceId: 'dev', sasToken: reordered }, deps)).kind, 'sas');
  });

  test('refusals: wrong key, expired, other host, other device, policy token, unknown, disabled', async () => {
    const tok = (aud: string, key = K1, se = soon()) => createSasToken(aud, key, se);
    await assert.rejects(
      authenticate({ deviceId: 'dev', sasToken: tok(`${HOST}/devices/dev`, KM) }, deps),
      refused('unauthorized', /signature/),
    );
    await assert.rejects(
      authenticate({ deviceId: 'dev', sasToken: tok(`${HOST}/devices/dev`, K1, 1000) }, deps),
      refused('expired'),
    );
    await assert.rejects(
      authenticate({ deviceId: 'dev', sasToken: tok(`other.host/devices/dev`) }, deps),
      refused('unauthorized', /not this hub/),
    );
    await assert.rejects(
      authenticate({ deviceId: 'dev', sasToken: tok(`${HOST}/devices/dev2`) }, deps),
      refused('unauthorized', /another identity/),
    );
    await assert.rejects(
      authenticate({ deviceId: 'dev', sasToken: createSasToken(HOST, K1, soon(), 'iothubowner') }, deps),
      refused('unauthorized', /policy/),
    );
    await assert.rejects(
      authenticate({ deviceId: 'dev', sasToken: 'SharedAccessSignature garbage' }, deps),
      refused('unauthorized'),
    );
    await assert.rejects(
      authenticate({ deviceId: 'ghost', sasToken: tok(`${HOST}/devices/ghost`) }, deps),
      refused('not-found'),
    );
    await assert.rejects(
      authenticate({ deviceId: 'off', sasToken: tok(`${HOST}/devices/off`) }, deps),
      refused('disabled'),
    );
    // A disabled identity with a bad signature is just unauthorized: status is not told to strangers.
    await assert.rejects(
      authenticate({ deviceId: 'off', sasToken: tok(`${HOST}/devices/off`, KM) }, deps),
      refused('unauthorized'),
    );
    await assert.rejects(authenticate({ deviceId: 'dev' }, deps), refused('unauthorized', /neither/));
  });

  test('a gateway also accepts its own host name', async () => {
    const t = createSasToken(`gw.local/devices/dev`, K1, soon());
    await assert.rejects(authenticate({ deviceId: 'dev', sasToken: t }, deps), refused('unauthorized'));
    assert.equal(
      (await authenticate({ deviceId: 'dev', sasToken: t, acceptedHostNames: ['gw.local'] }, deps)).kind,
      'sas',
    );
  });

  test('modules sign with their own key or their device key; the audience must name the module', async () => {
    const aud = `${HOST}/devices/dev/modules/mod`;
    const own = await authenticate(
      { deviceId: 'dev', moduleId: 'mod', sasToken: createSasToken(aud, KM, soon()) },
      deps,
    );
    assert.deepEqual(own.identity, { deviceId: 'dev', moduleId: 'mod' });
    assert.equal(own.signedWithDeviceKey, undefined);
    assert.equal(JSON.parse(own.authMethod).scope, 'module');
    const viaDevice = await authenticate(
      { deviceId: 'dev', moduleId: 'mod', sasToken: createSasToken(aud, K2, soon()) },
      deps,
    );
    assert.equal(viaDevice.signedWithDeviceKey, true);
    await assert.rejects(
      authenticate(
        { deviceId: 'dev', moduleId: 'mod', sasToken: createSasToken(`${HOST}/devices/dev`, K1, soon()) },
        deps,
      ),
      refused('unauthorized', /another identity/),
    );
    await assert.rejects(
      authenticate(
        { deviceId: 'dev', moduleId: 'nope', sasToken: createSasToken(`${HOST}/devices/dev/modules/nope`, K1, soon()) },
        deps,
      ),
      refused('not-found'),
    );
  });
});

describe('X.509', () => {
  let self: IssuedCert;
  let root: IssuedCert;
  let inter: IssuedCert;
  let leaf: IssuedCert;
  let expired: IssuedCert;
  const der = (pem: string) => new X509Certificate(pem).raw;
  before(async () => {
    [self, root] = await Promise.all([
      createDeviceCert({ commonName: 'x-self', keyAlgorithm: 'ec' }),
      createRootCa({ commonName: 'unit root', keyAlgorithm: 'ec' }),
    ]);
    inter = await createIntermediateCa({ commonName: 'unit inter', issuer: root, keyAlgorithm: 'ec' });
    [leaf, expired] = await Promise.all([
      createDeviceCert({ commonName: 'x-ca', issuer: inter, keyAlgorithm: 'ec' }),
      createDeviceCert({
        commonName: 'x-ca',
        issuer: inter,
        keyAlgorithm: 'ec',
        validFrom: new Date(Date.now() - 10 * 86400_000),
        days: 2,
      }),
    ]);
    devices.set('x-self', {
      deviceId: 'x-self',
      authentication: {
        type: 'selfSigned',
        x509Thumbprint: { primaryThumbprint: thumbprints(self.certPem).sha256.toLowerCase() },
      },
    });
    devices.set('x-ca', { deviceId: 'x-ca', authentication: { type: 'certificateAuthority' } });
    sas('x-sas');
  });

  test('self-signed by thumbprint', async () => {
    const r = await authenticate({ deviceId: 'x-self', clientCertificate: { raw: der(self.certPem) } }, deps);
    assert.equal(r.kind, 'x509-thumbprint');
    assert.equal(JSON.parse(r.authMethod).type, 'x509Certificate');
    await assert.rejects(
      authenticate({ deviceId: 'x-self', clientCertificate: { raw: der(leaf.certPem) } }, deps),
      refused('unauthorized', /thumbprint/),
    );
    await assert.rejects(
      authenticate({ deviceId: 'x-sas', clientCertificate: { raw: der(self.certPem) } }, deps),
      refused('unauthorized', /not X.509/),
    );
    await assert.rejects(
      authenticate({ deviceId: 'x-self', sasToken: createSasToken(`${HOST}/devices/x-self`, K1, soon()) }, deps),
      refused('unauthorized', /not SAS/),
    );
  });

  test('CA-signed: chain through a presented intermediate to a registered CA, CN = device id, validity', async () => {
    cas = [];
    await assert.rejects(
      authenticate(
        { deviceId: 'x-ca', clientCertificate: { raw: der(leaf.certPem), chain: [der(inter.certPem)] } },
        deps,
      ),
      refused('unauthorized', /no CA/),
    );
    cas = [new X509Certificate(root.certPem)];
    const r = await authenticate(
      { deviceId: 'x-ca', clientCertificate: { raw: der(leaf.certPem), chain: [der(inter.certPem)] } },
      deps,
    );
    assert.equal(r.kind, 'x509-ca');
    assert.equal(r.expiresAt, Date.parse(new X509Certificate(leaf.certPem).validTo));
    await assert.rejects(
      authenticate({ deviceId: 'x-ca', clientCertificate: { raw: der(leaf.certPem) } }, deps),
      refused('unauthorized', /does not chain/),
    );
    await assert.rejects(
      authenticate(
        { deviceId: 'x-ca', clientCertificate: { raw: der(expired.certPem), chain: [der(inter.certPem)] } },
        deps,
      ),
      refused('expired'),
    );
    devices.set('x-other', { deviceId: 'x-other', authentication: { type: 'certificateAuthority' } });
    await assert.rejects(
      authenticate(
        { deviceId: 'x-other', clientCertificate: { raw: der(leaf.certPem), chain: [der(inter.certPem)] } },
        deps,
      ),
      refused('unauthorized', /CN/),
    );
    // Registering the intermediate alone is enough too.
    cas = [new X509Certificate(inter.certPem)];
    assert.equal(
      (await authenticate({ deviceId: 'x-ca', clientCertificate: { raw: der(leaf.certPem) } }, deps)).kind,
      'x509-ca',
    );
  });
});
