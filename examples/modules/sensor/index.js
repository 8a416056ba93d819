// A sensor module: what a user writes for IoT Edge, on the official device SDK. The edge agent
// gives it IoT Edge's environment, so ModuleClient.fromEnvironment finds the gateway and signs
// through the workload API. Sends a temperature reading to its output "temperature" every
// INTERVAL_MS (default 1000) milliseconds.
import deviceSdk from 'azure-iot-device';
import mqtt from 'azure-iot-device-mqtt';

const { ModuleClient, Message } = deviceSdk;
const intervalMs = Number(process.env.INTERVAL_MS ?? 1000);

ModuleClient.fromEnvironment(mqtt.Mqtt, async (err, client) => {
  if (err) {
    console.error(`cannot read the module environment: ${err.message}`);
    process.exit(1);
  }
  try {
    await client.open();
  } catch (e) {
    // Exiting lets the restart policy try again after its back-off.
    console.error(`cannot connect to the gateway: ${e.message}`);
    process.exit(1);
  }
  console.log(`sensor ${process.env.IOTEDGE_MODULEID} on ${process.env.IOTEDGE_DEVICEID} sending every ${intervalMs} ms`);
  let n = 0;
  setInterval(() => {
    // A slow wave with noise: sometimes over the filter's threshold, mostly not.
    const temperature = 22 + 6 * Math.sin(n / 10) + Math.random() * 2;
    const msg = new Message(JSON.stringify({ n: n++, temperature: Number(temperature.toFixed(2)) }));
    msg.contentType = 'application/json';
    msg.contentEncoding = 'utf-8';
    client.sendOutputEvent('temperature', msg).catch((e) => console.error(`send failed: ${e.message}`));
  }, intervalMs);
});
