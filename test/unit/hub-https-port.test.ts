import assert from 'node:assert/strict';
import { test } from 'node:test';
import { withHttpsPort } from '../../src/hub/local.ts';

test('a service connection string names the hub port in HostName only when it is not 443', () => {
  const cs = 'HostName=127.10.0.1;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5';
  assert.equal(withHttpsPort(cs, 443), cs);
  assert.equal(withHttpsPort(cs, undefined), cs);
  assert.equal(
    withHttpsPort(cs, 8443),
    'HostName=127.10.0.1:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5',
  );
  // A HostName that already has a port keeps it; HostName last in the string works too.
  assert.equal(withHttpsPort('HostName=hub:9443;SharedAccessKey=a2V5', 8443), 'HostName=hub:9443;SharedAccessKey=a2V5');
  assert.equal(withHttpsPort('SharedAccessKey=a2V5;HostName=hub', 8443), 'SharedAccessKey=a2V5;HostName=hub:8443');
});
