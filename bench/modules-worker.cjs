// The modules of bench/modules.ts, as users write them: ModuleClient.fromEnvironment(Mqtt),
// unchanged. BENCH_ROLE says which:
//   idle      opens its client and sits (the load of a deployed module that has nothing to do);
//   sender    waits for job files in BENCH_DIR (job-N.json: {output, count, size, window, rate})
//             and sends each job's messages to its output, the send time in the first 8 bytes
//             and N in the next 4; writes sent-N.json when every send was acknowledged;
//   receiver  takes messages on its input and writes recv-N.json ({latencies, firstStamp,
//             lastAt}) when job N's count (from its job file) has arrived.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { ModuleClient, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const role = process.env.BENCH_ROLE;
const dir = process.env.BENCH_DIR;

function readJob(n) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, `job-${n}.json`), 'utf8'));
  } catch {
    return undefined;
  }
}

/** Writes beside, then renames, so the harness never reads half a file. */
function writeResult(name, value) {
  const file = path.join(dir, name);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(value));
  fs.renameSync(`${file}.tmp`, file);
}

async function send(client, n, job) {
  const inflight = [];
  const period = job.rate > 0 ? 1000 / job.rate : 0;
  const t0 = Date.now();
  for (let k = 0; k < job.count; k++) {
    if (period > 0) {
      const wait = t0 + k * period - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    const body = Buffer.alloc(job.size);
    body.writeBigUInt64BE(BigInt(Date.now()), 0);
    body.writeUInt32BE(n, 8);
    inflight.push(client.sendOutputEvent(job.output, new Message(body)));
    if (period === 0 && inflight.length >= job.window) await Promise.all(inflight.splice(0));
  }
  await Promise.all(inflight);
  writeResult(`sent-${n}.json`, { sent: job.count, ms: Date.now() - t0 });
}

function receive(client) {
  const jobs = new Map();
  client.on('inputMessage', (_input, msg) => {
    const at = Date.now();
    client.complete(msg, () => undefined);
    const body = msg.data;
    if (!Buffer.isBuffer(body) || body.length < 12) return;
    const stamp = Number(body.readBigUInt64BE(0));
    const n = body.readUInt32BE(8);
    let j = jobs.get(n);
    if (!j) {
      const job = readJob(n);
      if (!job) return;
      jobs.set(n, (j = { count: job.count, latencies: [], firstStamp: stamp, lastAt: at }));
    }
    j.latencies.push(at - stamp);
    j.firstStamp = Math.min(j.firstStamp, stamp);
    j.lastAt = at;
    if (j.latencies.length === j.count) writeResult(`recv-${n}.json`, j);
  });
}

ModuleClient.fromEnvironment(Mqtt, async (err, client) => {
  if (err) {
    console.error(`fromEnvironment failed: ${err.message}`);
    process.exit(2);
  }
  if (role === 'receiver') receive(client);
  try {
    await client.open();
  } catch (e) {
    console.error(`open failed: ${e.message}`);
    process.exit(2);
  }
  console.log(`${role} ${process.env.IOTEDGE_MODULEID} open`);
  if (role !== 'sender') return;
  let n = 1;
  for (;;) {
    const job = readJob(n);
    if (!job) {
      await new Promise((r) => setTimeout(r, 20));
      continue;
    }
    try {
      await send(client, n, job);
    } catch (e) {
      console.error(`job ${n} failed: ${e.message}`);
      writeResult(`sent-${n}.json`, { error: e.message });
    }
    n++;
  }
});
