import { createRequire } from 'node:module';
import { createSasToken } from '../../src/identity/sas.ts';

const require = createRequire(import.meta.url);
// The MQTT client the device SDK itself uses (mqtt.js); its connect/publish callback API is stable across versions.
const mqtt = require('mqtt') as any;

/** A device speaking IoT Hub MQTT directly (no SDK): for many connections at once, and exact refusal codes. */
export interface MqttLeaf {
  client: any;
  publish(payload: Buffer, props?: string): Promise<void>;
  end(): Promise<void>;
}

/**
 * Connects `deviceId` to `address:port` over TLS with a SAS token for `hubHostName`. Rejects
 * with the CONNACK refusal (err.code = the return code) or the socket error.
 */
export async function connectMqttLeaf(o: {
  address: string;
  port?: number;
  ca: string;
  hubHostName: string;
  deviceId: string;
  key: string;
  keepalive?: number;
}): Promise<MqttLeaf> {
  const token = createSasToken(`${o.hubHostName}/devices/${o.deviceId}`, o.key, Math.floor(Date.now() / 1000) + 3600);
  const client = mqtt.connect(`mqtts://${o.address}:${o.port ?? 8883}`, {
    ca: o.ca,
    clientId: o.deviceId,
    username: `${o.hubHostName}/${o.deviceId}/?api-version=2021-04-12`,
    password: token,
    protocolVersion: 4,
    clean: true,
    reconnectPeriod: 0,
    keepalive: o.keepalive ?? 60,
    rejectUnauthorized: true,
  });
  await connackOf(client);
  return {
    client,
    publish: (payload, props = '') =>
      new Promise<void>((res, rej) =>
        client.publish(`devices/${o.deviceId}/messages/events/${props}`, payload, { qos: 1 }, (err?: Error) =>
          err ? rej(err) : res(),
        ),
      ),
    // A client the server already dropped never finishes a graceful end: force it then, and never wait long.
    end: () =>
      new Promise<void>((res) => {
        if (!client.connected) {
          client.end(true);
          return res();
        }
        const timer = setTimeout(res, 2000);
        client.end(!client.connected, {}, () => {
          clearTimeout(timer);
          res();
        });
      }),
  };
}

/**
 * Resolves once an mqtt.js client has its CONNACK; rejects with the refusal (err.code = the
 * return code) or the socket error, the client then ended. Later errors are the caller's to see
 * as a close.
 */
export function connackOf(client: any): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => {
      client.end(true);
      reject(err);
    };
    client.once('error', fail);
    client.once('close', () => fail(new Error('connection closed before CONNACK')));
    client.once('connect', () => {
      client.removeListener('error', fail);
      client.removeAllListeners('close');
      client.on('error', () => undefined);
      resolve();
    });
  });
}
