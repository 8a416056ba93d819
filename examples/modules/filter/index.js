// A filter module: takes readings on its input "input1" and passes on, to its output
// "alerts", only those above THRESHOLD (default 25) degrees, marked with the property
// alert=true. The deployment's routes say where input1 comes from and where alerts go.
import deviceSdk from 'azure-iot-device';
import mqtt from 'azure-iot-device-mqtt';

const { ModuleClient, Message } = deviceSdk;
const threshold = Number(process.env.THRESHOLD ?? 25);

ModuleClient.fromEnvironment(mqtt.Mqtt, async (err, client) => {
  if (err) {
    console.error(`cannot read the module environment: ${err.message}`);
    process.exit(1);
  }
  let passed = 0;
  let dropped = 0;
  client.on('inputMessage', (input, msg) => {
    client.complete(msg, () => undefined);
    if (input !== 'input1') return;
    let reading;
    try {
      reading = JSON.parse(msg.data.toString());
    } catch {
      dropped++;
      return;
    }
    if (!(reading.temperature > threshold)) {
      dropped++;
      return;
    }
    passed++;
    const out = new Message(JSON.stringify({ ...reading, threshold }));
    out.contentType = 'application/json';
    out.contentEncoding = 'utf-8';
    out.properties.add('alert', 'true');
    client.sendOutputEvent('alerts', out).catch((e) => console.error(`send failed: ${e.message}`));
  });
  try {
    await client.open();
  } catch (e) {
    console.error(`cannot connect to the gateway: ${e.message}`);
    process.exit(1);
  }
  console.log(`filter ${process.env.IOTEDGE_MODULEID} passing readings over ${threshold}`);
  setInterval(() => console.log(`passed ${passed}, dropped ${dropped}`), 60_000).unref();
});
