/**
 * What an idle authenticated connection keeps (bench/idle-connections.ts measures the whole):
 * no copy of its CONNECT packet, the SAS token in it above all (nor the mqtt-packet parser that
 * read it), and no handshake timer left on its TLS socket.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import { connect as tlsConnect, createServer, type TLSSocket } from 'node:tls';
import mqtt from 'mqtt-packet';
import { Engine } from '../../src/engine/engine.ts';
import { eventStreamSink } from '../../src/hub/events.ts';
import { EventStream } from '../../src/store/event-stream.ts';
import type { RegistryIdentity } from '../../src/model/identity.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import { createRootCa, createServerCert } from '../../src/pki/index.ts';
import { MqttConnection } from '../../src/protocols/mqtt/connection.ts';
import { GATED_TLS_OPTIONS, PreAuthGate } from '../../src/protocols/pre-auth.ts';

const KEY = Buffer.alloc(32, 7).toString('base64');

/** The registry surface the engine uses, in memory. */
class MemoryRegistry extends EventEmitter {
  readonly device: RegistryIdentity = {
    deviceId: 'idle-1',
    status: 'enabled',
    authentication: { type: 'sas', symmetricKey: { primaryKey: KEY, secondaryKey: KEY } },
  };
  getDevice(id: string) {
    return id === this.device.deviceId ? this.device : undefined;
  }
  getModule() {
    return undefined;
  }
  getTwin() {
    return undefined;
  }
  updateReported() {
    return { version: 1 };
  }
  setConnectionState() {}
}

/** Both ends of an in-memory transport: the connection's stream, and what it wrote. */
function transport(): { stream: Duplex; written: Buffer[] } {
  const written: Buffer[] = [];
  const stream = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      written.push(chunk);
      cb();
    },
  });
  return { stream, written };
}

test('an authenticated MQTT connection keeps no copy of its CONNECT packet or the token in it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-mqtt-idle-'));
  const events = new EventStream({ dir });
  const engine = new Engine({
    registry: new MemoryRegistry(),
    dataDir: dir,
    hostName: 'hub.test',
    telemetrySink: eventStreamSink(events),
  });
  await engine.start();
  const { stream, written } = transport();
  const conn = new MqttConnection(stream, engine, { protocol: 'mqtt', remote: '127.0.0.1:1' });
  t.after(async () => {
    conn.close();
    await engine.close();
    await events.close();
    await rm(dir, { recursive: true, force: true });
  });
  const token = createSasToken('hub.test/devices/idle-1', KEY, Math.floor(Date.now() / 1000) + 600);
  stream.push(
    mqtt.generate({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: true,
      clientId: 'idle-1',
      keepalive: 0,
      username: 'hub.test/idle-1/?api-version=2021-04-12',
      password: Buffer.from(token),
    }),
  );
  for (let i = 0; i < 200 && written.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  const replies: mqtt.Packet[] = [];
  const parser = mqtt.parser({ protocolVersion: 4 });
  parser.on('packet', (p) => replies.push(p));
  for (const b of written) parser.parse(b);
  assert.equal(replies[0]?.cmd, 'connack');
  assert.equal((replies[0] as mqtt.IConnackPacket).returnCode, 0);

  // mqtt-packet's parser kept the whole CONNECT (the token in its password above all) in its
  // settings: it is gone once the connection is established, and the packet reader reads on.
  assert.equal((conn as unknown as { parser?: unknown }).parser, undefined, 'no mqtt-packet parser kept');
  written.length = 0;
  stream.push(mqtt.generate({ cmd: 'pingreq' }));
  for (let i = 0; i < 200 && written.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(Buffer.concat(written), mqtt.generate({ cmd: 'pingresp' }));
});

test('a guarded TLS server leaves no handshake timer on an established connection', async (t) => {
  const root = await createRootCa({ commonName: 'idle test root', keyAlgorithm: 'ec' });
  const server = await createServerCert({
    hostname: 'localhost',
    extraNames: ['127.0.0.1'],
    issuer: root,
    keyAlgorithm: 'ec',
  });
  const tls = createServer({
    cert: server.certPem,
    key: server.keyPem,
    requestCert: true,
    rejectUnauthorized: false,
    ...GATED_TLS_OPTIONS,
  });
  new PreAuthGate().guardTls(tls, 'MQTT');
  const accepted = new Promise<TLSSocket>((resolve) => tls.once('secureConnection', resolve));
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
  const port = (tls.address() as { port: number }).port;
  const client = tlsConnect({ host: '127.0.0.1', port, ca: root.certPem, servername: 'localhost' });
  client.on('error', () => undefined);
  const socket = await accepted;
  t.after(() => {
    client.destroy();
    socket.destroy();
    return new Promise<void>((resolve) => tls.close(() => resolve()));
  });
  // Node keeps a socket's timer under a symbol; a cleared one stays allocated for the socket's life.
  const timers = Object.getOwnPropertySymbols(socket)
    .map((s) => (socket as unknown as Record<symbol, unknown>)[s])
    .filter((v) => v !== null && typeof v === 'object' && v.constructor?.name === 'Timeout');
  assert.equal(timers.length, 0, 'no Timeout object left on the TLS socket');
});
