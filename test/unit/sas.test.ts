import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  createSasToken,
  parseSasToken,
  signatureMatches,
  isExpired,
  splitAudience,
  SasError,
} from '../../src/identity/sas.ts';
import { parseConnectionString, formatConnectionString } from '../../src/identity/connection-string.ts';

const key = Buffer.from('0123456789abcdef0123456789abcdef').toString('base64');
const other = Buffer.from('fedcba9876543210fedcba9876543210').toString('base64');

test('a token made for an audience parses back and verifies with its key only', () => {
  const tok = createSasToken('hub.local/devices/dev-1', key, 2_000_000_000);
  const p = parseSasToken(tok);
  assert.equal(p.sr, 'hub.local/devices/dev-1');
  assert.equal(p.srRaw, 'hub.local%2Fdevices%2Fdev-1');
  assert.equal(p.se, 2_000_000_000);
  assert.equal(p.skn, undefined);
  assert.ok(signatureMatches(p, [key]));
  assert.ok(signatureMatches(p, [other, key]), 'secondary key is tried');
  assert.ok(!signatureMatches(p, [other]));
});

test('field order does not matter and skn is read', () => {
  const tok = createSasToken('hub.local', key, 2_000_000_000, 'iothubowner');
  const fields = tok.slice('SharedAccessSignature '.length).split('&').reverse().join('&');
  const p = parseSasToken('SharedAccessSignature ' + fields);
  assert.equal(p.skn, 'iothubowner');
  assert.ok(signatureMatches(p, [key]));
});

test('the signature covers the audience text as sent, so a re-encoded audience fails', () => {
  const tok = createSasToken('hub.local/devices/dev-1', key, 2_000_000_000);
  const tampered = tok.replace('hub.local%2Fdevices%2Fdev-1', 'hub.local/devices/dev-1');
  assert.ok(!signatureMatches(parseSasToken(tampered), [key]));
});

test('malformed tokens are refused with a SasError', () => {
  for (const bad of [
    '',
    'Bearer x',
    'SharedAccessSignature sr=a&sig=b',
    'SharedAccessSignature sr=a&sig=b&se=soon',
    'SharedAccessSignature garbage',
  ]) {
    assert.throws(() => parseSasToken(bad), SasError, bad);
  }
});

test('expiry is checked against the clock', () => {
  const p = parseSasToken(createSasToken('h/devices/d', key, 1000));
  assert.ok(isExpired(p, 1_000_001));
  assert.ok(!isExpired(p, 999_000));
});

test('audiences split into host and path', () => {
  assert.deepEqual(splitAudience('hub.local/devices/d1/modules/m1'), {
    host: 'hub.local',
    path: '/devices/d1/modules/m1',
  });
  assert.deepEqual(splitAudience('hub.local'), { host: 'hub.local', path: '' });
  assert.deepEqual(splitAudience('amqps://hub.local/devices/d1/'), { host: 'hub.local', path: '/devices/d1' });
});

test('connection strings keep "=" inside values', () => {
  const cs = 'HostName=h;DeviceId=d;SharedAccessKey=abc==';
  const f = parseConnectionString(cs);
  assert.equal(f.SharedAccessKey, 'abc==');
  assert.equal(formatConnectionString(f), cs);
  assert.throws(() => parseConnectionString('HostName'), /malformed/);
});
