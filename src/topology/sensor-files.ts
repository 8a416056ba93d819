import { readFileSync } from 'node:fs';
import { UserError } from '../util/errors.ts';
import type { SensorProtocol } from './spec.ts';

/**
 * The two files of a simulated sensor: its settings (written by `up`) and its status (written
 * by the sensor every second, read by `status`). Kept apart from sensor.ts so reading them does
 * not load the device SDK.
 */

export interface SensorConfig {
  deviceId: string;
  connectionString: string;
  protocol: SensorProtocol;
  intervalMs: number;
  /** PEM file of the root CA the gateway's chain ends in. */
  caFile: string;
  statusFile: string;
}

export interface SensorStatus {
  deviceId: string;
  pid: number;
  state: 'connecting' | 'connected' | 'disconnected';
  /** Messages the gateway acknowledged. */
  sent: number;
  failed: number;
  /** Readings dropped because the previous one was still being sent. */
  skipped: number;
  lastError?: string;
  lastSentAt?: string;
  updatedAt: string;
}

export function readSensorConfig(file: string): SensorConfig {
  let parsed: Partial<SensorConfig>;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8')) as Partial<SensorConfig>;
  } catch (err) {
    throw new UserError(
      `cannot read the sensor config ${file}: ${(err as Error).message}`,
      'It is written by `strata topology up`; run that again',
    );
  }
  for (const key of ['deviceId', 'connectionString', 'protocol', 'intervalMs', 'caFile', 'statusFile'] as const) {
    if (parsed[key] === undefined)
      throw new UserError(
        `the sensor config ${file} lacks ${key}`,
        'It is written by `strata topology up`; run that again',
      );
  }
  return parsed as SensorConfig;
}

export function readSensorStatus(file: string): SensorStatus | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as SensorStatus;
  } catch {
    return undefined;
  }
}
