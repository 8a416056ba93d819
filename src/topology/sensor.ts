import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import deviceSdk from 'azure-iot-device';
import mqttSdk from 'azure-iot-device-mqtt';
import amqpSdk from 'azure-iot-device-amqp';
import type { Client as DeviceClient } from 'azure-iot-device';
import { childLog } from '../util/log.ts';
import type { SensorConfig, SensorStatus } from './sensor-files.ts';
import type { SensorProtocol } from './spec.ts';

/**
 * A simulated temperature sensor: the official device SDK, connecting through its gateway
 * (GatewayHostName in the connection string) and trusting the hierarchy's root CA, sending
 * `{"temperature":..,"humidity":..}` every interval. It writes a small status file so
 * `strata topology status` can tell how it is doing (see sensor-files.ts).
 */

const { Client, Message } = deviceSdk;
const log = childLog('sensor');

/** A reading that drifts like a room's air rather than jumping at random. */
export class Weather {
  private temperature = 20 + Math.random() * 5;
  private humidity = 40 + Math.random() * 20;

  next(): { temperature: number; humidity: number } {
    this.temperature = clamp(this.temperature + (Math.random() - 0.5) * 0.4, -20, 50);
    this.humidity = clamp(this.humidity + (Math.random() - 0.5) * 1.0, 5, 95);
    return { temperature: round2(this.temperature), humidity: round2(this.humidity) };
  }
}

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
const round2 = (v: number) => Math.round(v * 100) / 100;

function transportFor(protocol: SensorProtocol) {
  return protocol === 'amqp' ? amqpSdk.Amqp : mqttSdk.Mqtt;
}

function reason(err: unknown): string {
  const e = err as { message?: string; responseBody?: string; transportError?: { message?: string } };
  const inner = e?.transportError?.message;
  const outer = e?.message ?? String(err);
  return inner && !outer.includes(inner) ? `${outer} (${inner})` : outer;
}

/**
 * Runs until `stop` aborts (the sensors of one process share it); resolves when the client has
 * closed.
 */
export async function runSensor(config: SensorConfig, stop: AbortSignal): Promise<void> {
  const ca = readFileSync(config.caFile, 'utf8');
  const client: DeviceClient = Client.fromConnectionString(config.connectionString, transportFor(config.protocol));
  const weather = new Weather();
  const status: SensorStatus = {
    deviceId: config.deviceId,
    pid: process.pid,
    state: 'connecting',
    sent: 0,
    failed: 0,
    skipped: 0,
    updatedAt: new Date().toISOString(),
  };
  let seq = 0;
  let busy = false;
  let stopping = false;
  let open = false;

  const saveStatus = () => {
    status.updatedAt = new Date().toISOString();
    const tmp = `${config.statusFile}.tmp`;
    try {
      writeFileSync(tmp, `${JSON.stringify(status)}\n`);
      renameSync(tmp, config.statusFile);
    } catch (err) {
      log.warn({ err: reason(err) }, 'cannot write the status file');
    }
  };
  const failed = (what: string, err: unknown) => {
    status.lastError = `${what}: ${reason(err)}`;
    log.warn({ deviceId: config.deviceId, err: status.lastError }, what);
  };

  client.on('error', (err: Error) => failed('client error', err));
  client.on('disconnect', () => {
    open = false;
    status.state = 'disconnected';
    if (!stopping)
      log.warn({ deviceId: config.deviceId }, 'disconnected from the gateway; reconnecting on the next reading');
  });
  await client.setOptions({ ca });

  const connect = async () => {
    status.state = 'connecting';
    await client.open();
    open = true;
    status.state = 'connected';
    status.lastError = undefined;
    log.info({ deviceId: config.deviceId, protocol: config.protocol }, 'connected through the gateway');
  };

  const tick = async () => {
    if (stopping) return;
    if (busy) {
      status.skipped++;
      return;
    }
    busy = true;
    try {
      if (!open) await connect();
      const msg = new Message(JSON.stringify(weather.next()));
      msg.messageId = `${config.deviceId}-${++seq}`;
      msg.contentType = 'application/json';
      msg.contentEncoding = 'utf-8';
      await client.sendEvent(msg);
      status.sent++;
      status.lastSentAt = new Date().toISOString();
    } catch (err) {
      status.failed++;
      failed(open ? 'send failed' : 'cannot connect', err);
    } finally {
      busy = false;
    }
  };

  const statusTimer = setInterval(saveStatus, 1000);
  const timer = setInterval(() => void tick(), config.intervalMs);
  saveStatus();
  void tick();

  await new Promise<void>((resolve) => {
    const end = () => {
      if (stopping) return;
      stopping = true;
      clearInterval(timer);
      clearInterval(statusTimer);
      status.state = 'disconnected';
      saveStatus();
      const force = setTimeout(resolve, 5000);
      client
        .close()
        .catch(() => undefined)
        .finally(() => {
          clearTimeout(force);
          resolve();
        });
    };
    if (stop.aborted) end();
    else stop.addEventListener('abort', end, { once: true });
  });
}
