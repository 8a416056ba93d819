// A leaf device on the official Azure IoT device SDK, sending a temperature reading every few
// seconds through a Strata gateway (or any IoT Edge gateway). Copy it into your own project
// (`npm install azure-iot-device azure-iot-device-mqtt azure-iot-device-amqp`); nothing in it is
// specific to Strata.
//
//   DEVICE_CONNECTION_STRING  HostName=...;DeviceId=...;SharedAccessKey=...;GatewayHostName=...
//                             (X.509: x509=true instead of SharedAccessKey)
//   PROTOCOL                  mqtt (default) or amqp
//   X509_CERT_FILE            with x509=true: the device certificate (PEM, full chain) ...
//   X509_KEY_FILE             ... and its private key
//   CA_FILE                   the root CA that signed the gateway's certificate, given to the SDK
//                             with setOptions({ ca }); or leave it out and start node with
//                             NODE_EXTRA_CA_CERTS=that file
//   INTERVAL_MS               between messages (default 2000)
//   COUNT                     stop after this many messages (default: run until Ctrl-C)
//
// Run: DEVICE_CONNECTION_STRING='...' NODE_EXTRA_CA_CERTS=root.pem node leaf-device.mjs

import { readFileSync } from 'node:fs';
import deviceSdk from 'azure-iot-device';
import amqpSdk from 'azure-iot-device-amqp';
import mqttSdk from 'azure-iot-device-mqtt';

const { Client, Message } = deviceSdk;

function fail(message) {
  process.stderr.write(`leaf-device: ${message}\n`);
  process.exit(2);
}

const connectionString = process.env.DEVICE_CONNECTION_STRING;
if (!connectionString) fail('set DEVICE_CONNECTION_STRING (see `strata device connection-string ID --gateway HOST`)');
const protocol = (process.env.PROTOCOL ?? 'mqtt').toLowerCase();
if (protocol !== 'mqtt' && protocol !== 'amqp') fail(`PROTOCOL must be mqtt or amqp, not "${protocol}"`);
const x509 = /(^|;)\s*x509=true\s*(;|$)/i.test(connectionString);
const intervalMs = Number(process.env.INTERVAL_MS ?? 2000);
if (!Number.isFinite(intervalMs) || intervalMs < 100) fail('INTERVAL_MS must be a number of milliseconds, 100 or more');
const count = process.env.COUNT === undefined ? Number.POSITIVE_INFINITY : Number(process.env.COUNT);
if (!Number.isInteger(count) && count !== Number.POSITIVE_INFINITY) fail('COUNT must be a whole number');

function read(name) {
  const file = process.env[name];
  if (!file) return undefined;
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    fail(`${name}: cannot read ${file}: ${err.code ?? err.message}`);
  }
}

const client = Client.fromConnectionString(connectionString, protocol === 'amqp' ? amqpSdk.Amqp : mqttSdk.Mqtt);

// The gateway's certificate chains to the hierarchy's root CA, which the system does not know:
// hand it to the SDK here, or to Node with NODE_EXTRA_CA_CERTS.
const options = {};
const ca = read('CA_FILE');
if (x509) {
  options.cert = read('X509_CERT_FILE');
  options.key = read('X509_KEY_FILE');
  if (!options.cert || !options.key) fail('x509=true in the connection string: set X509_CERT_FILE and X509_KEY_FILE');
}
if (ca) options.ca = ca;
// One call with everything: each setOptions call replaces the transport options of the one
// before, so a CA given first and the certificate after it is forgotten.
if (Object.keys(options).length > 0) await client.setOptions(options);

client.on('error', (err) => process.stderr.write(`leaf-device: ${err.message}\n`));
client.on('disconnect', () => process.stderr.write('leaf-device: disconnected\n'));
// Cloud-to-device messages, e.g. `strata device send ID --body hello`.
client.on('message', (msg) => {
  process.stdout.write(`received: ${msg.getData().toString()}\n`);
  client.complete(msg).catch(() => undefined);
});

try {
  await client.open();
} catch (err) {
  fail(`cannot connect: ${err.message}`);
}
process.stdout.write(`connected over ${protocol} (${x509 ? 'X.509' : 'SAS'})\n`);

let sent = 0;
let temperature = 21;
let timer;
let stopping = false;

async function stop() {
  if (stopping) return;
  stopping = true;
  clearTimeout(timer);
  await client.close().catch(() => undefined);
  process.stdout.write(`stopped after ${sent} messages\n`);
}
process.once('SIGINT', stop);
process.once('SIGTERM', stop);

async function send() {
  temperature += (Math.random() - 0.5) * 0.4;
  const msg = new Message(JSON.stringify({ temperature: Math.round(temperature * 100) / 100, seq: sent + 1 }));
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  try {
    await client.sendEvent(msg);
    sent++;
    process.stdout.write(`sent ${sent}: ${msg.getData()}\n`);
  } catch (err) {
    process.stderr.write(`leaf-device: send failed: ${err.message}\n`);
  }
  if (stopping) return;
  if (sent >= count) return stop();
  timer = setTimeout(send, intervalMs);
}
await send();
