import { isIP } from 'node:net';
import { PRE_AUTH_SETTINGS, PreAuthGate, preAuthLimitsFrom } from '../protocols/pre-auth.ts';
import { DEFAULT_RESEND_WINDOW_MS } from '../store/message-store.ts';
import { DEFAULT_DISK_RESERVE_BYTES, reserveBytesOf } from '../store/disk-headroom.ts';
import type { UpstreamTransport } from '../upstream/transport.ts';
import { UserError } from '../util/errors.ts';
import type { EdgeConfig } from './config.ts';

/**
 * The gateway's settings from config.toml's `[strata]` table and the environment, each read with
 * the original's default and refused with a message that says what to set.
 */

/** The original edge hub's default. */
export const DEFAULT_MAX_CONNECTED_CLIENTS = 100;
/** The original's metrics port. */
export const DEFAULT_METRICS_PORT = 9600;

/** A setting's value and where it came from (the start-up summary names it). */
export type Setting<T> = { value: T; source: string };

/** MaxConnectedClients: `[strata] max_connected_clients`, else the environment variable, else 100. */
export function maxClientsSetting(config: EdgeConfig, env: NodeJS.ProcessEnv): Setting<number> {
  const fromConfig = config.settings.max_connected_clients;
  const fromEnv = env.MaxConnectedClients;
  const check = (v: unknown, where: string): number => {
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
      throw new UserError(
        `MaxConnectedClients from ${where} must be a whole number of 0 or more, got ${JSON.stringify(v)}`,
        'Set it to e.g. 100 (the default)',
      );
    }
    return n;
  };
  if (fromConfig !== undefined)
    return { value: check(fromConfig, '[strata] max_connected_clients'), source: '[strata] max_connected_clients' };
  if (fromEnv !== undefined && fromEnv !== '')
    return { value: check(fromEnv, 'the environment variable MaxConnectedClients'), source: 'env MaxConnectedClients' };
  return { value: DEFAULT_MAX_CONNECTED_CLIENTS, source: 'default' };
}

/** How long a device's message id is remembered to recognise its resend: `[strata] resend_window_secs`, default 300, 0 disables. */
export function resendWindowSetting(config: EdgeConfig): Setting<number> {
  const v = config.settings.resend_window_secs;
  if (v === undefined) return { value: DEFAULT_RESEND_WINDOW_MS / 1000, source: 'default' };
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 86_400) {
    throw new UserError(
      `[strata] resend_window_secs must be a number of seconds from 0 to 86400, got ${JSON.stringify(v)}`,
      'Set it to e.g. 300 (the default), or 0 to store every resend of a device again',
    );
  }
  return { value: v, source: '[strata] resend_window_secs' };
}

/**
 * The agent's first restart cool-off (doubling per restart): `[strata] cool_off_time_unit_secs`,
 * IoT Edge's CoolOffTimeUnitInSeconds, default 10.
 */
export function coolOffUnitSetting(config: EdgeConfig): Setting<number> {
  const v = config.settings.cool_off_time_unit_secs;
  if (v === undefined) return { value: 10, source: 'default' };
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 3600) {
    throw new UserError(
      `[strata] cool_off_time_unit_secs must be a number of seconds from 0 to 3600, got ${JSON.stringify(v)}`,
      'Set it to e.g. 10 (the default): a module that exits is restarted after 10 s, then 20 s, 40 s ...',
    );
  }
  return { value: v, source: '[strata] cool_off_time_unit_secs' };
}

/** UpstreamProtocol: `[strata] upstream_protocol`, else the environment variable, else Amqp. */
export function upstreamTransport(config: EdgeConfig, env: NodeJS.ProcessEnv): UpstreamTransport {
  const raw = String(config.settings.upstream_protocol ?? env.UpstreamProtocol ?? 'Amqp');
  const v = raw.trim().toLowerCase();
  if (v === 'amqp' || v === 'amqpws' || v === 'mqtt' || v === 'mqttws') return v;
  throw new UserError(
    `UpstreamProtocol "${raw}" is not one of Amqp, AmqpWs, Mqtt, MqttWs`,
    'Set UpstreamProtocol (env) or [strata] upstream_protocol to Amqp, AmqpWs, Mqtt or MqttWs',
  );
}

/** [strata] settings read once at start (listeners, stores): `config apply` names them as needing a restart. */
export const START_ONLY_SETTINGS: readonly string[] = [
  'metrics_bind',
  'metrics_port',
  'https_port',
  'parent_https_port',
  'disk_reserve_mb',
  'resend_window_secs',
  'cool_off_time_unit_secs',
  ...Object.values(PRE_AUTH_SETTINGS).map((s) => s.setting),
];

/** Where Prometheus metrics listen by default: this machine only. */
export const DEFAULT_METRICS_BIND = '127.0.0.1';

/** `[strata] metrics_bind`: metrics are plain HTTP without authentication, so loopback unless it says otherwise. */
export function metricsBindSetting(v: unknown): string {
  if (v === undefined) return DEFAULT_METRICS_BIND;
  if (typeof v !== 'string' || isIP(v) === 0) {
    throw new UserError(
      `[strata] metrics_bind must be an IP address to serve metrics on, got ${JSON.stringify(v)}`,
      `Leave it out for ${DEFAULT_METRICS_BIND} (this machine only), or give the address a Prometheus server reaches`,
    );
  }
  return v;
}

export function isLoopback(address: string): boolean {
  return address.startsWith('127.') || address === '::1' || address === '::ffff:127.0.0.1';
}

/** Limits on unauthenticated clients from [strata] (tls_handshake_timeout_secs, max_unauthenticated, ...). */
export function preAuthGateOf(config: EdgeConfig): PreAuthGate {
  try {
    return new PreAuthGate(
      preAuthLimitsFrom(
        (k) => config.settings[k],
        (k) => `[strata] ${k}`,
      ),
    );
  } catch (err) {
    throw new UserError(
      (err as Error).message,
      'Timeouts are seconds (e.g. 10 or 0.5); caps are whole numbers of connections',
    );
  }
}

/** [strata] disk_reserve_mb, else the environment variable STRATA_DISK_RESERVE_MB, else the default. */
export function diskReserveSetting(config: EdgeConfig, env: NodeJS.ProcessEnv): { bytes: number; name: string } {
  const name = '[strata] disk_reserve_mb';
  try {
    if (config.settings.disk_reserve_mb !== undefined)
      return { bytes: reserveBytesOf(config.settings.disk_reserve_mb, name), name };
    const raw = env.STRATA_DISK_RESERVE_MB;
    if (raw !== undefined && raw.trim() !== '')
      return { bytes: reserveBytesOf(raw, 'the environment variable STRATA_DISK_RESERVE_MB'), name };
  } catch (err) {
    throw new UserError((err as Error).message, 'Set it to a number of MiB, e.g. 64 (the default)');
  }
  return { bytes: DEFAULT_DISK_RESERVE_BYTES, name };
}

/**
 * [strata] https_port (this gateway's HTTPS listener) or parent_https_port (where its parent
 * serves HTTPS: scope, key, registry, WebSocket upstream), when set: both default to 443, which
 * needs root; a gateway run unprivileged moves them (`strata topology up` does so when it must).
 */
export function httpsPortSetting(config: EdgeConfig, key: 'https_port' | 'parent_https_port'): number | undefined {
  const v = config.settings[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535)
    throw new UserError(
      `[strata] ${key} must be a port number from 1 to 65535, got ${JSON.stringify(v)}`,
      'Leave it out for 443, or give e.g. 8443 to run without root',
    );
  return v;
}

/** [strata] metrics_port, when set. */
export function metricsPortSetting(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 65535)
    throw new UserError(`[strata] metrics_port must be a port number, got ${JSON.stringify(v)}`);
  return v;
}
