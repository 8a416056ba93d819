import { type Command, InvalidArgumentError } from 'commander';
import type { EventJson, EventPageJson } from '../hub/service-messaging.ts';
import { UserError } from '../util/errors.ts';
import { action } from './run.ts';
import { openServiceClient, withHubAccessFlags, type HubAccessFlags } from './hub-access.ts';

/**
 * `strata hub monitor-events`: follows the hub's event stream and prints one JSON object per
 * message in the shape `az iot hub monitor-events` prints.
 */

/** Per long-poll request, below the service client's 30 s request timeout. */
const POLL_WAIT_S = 20;

/**
 * Reads `--since`: an ISO 8601 time, epoch milliseconds, or a span back from now such as
 * `90s`, `15m`, `2h`, `1d`.
 */
export function parseSince(text: string, now = Date.now()): number {
  const t = text.trim();
  const span = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/i.exec(t);
  if (span) {
    const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[
      span[2]!.toLowerCase() as 'ms' | 's' | 'm' | 'h' | 'd'
    ];
    return now - Number(span[1]) * unit;
  }
  const ms = /^\d+$/.test(t) ? Number(t) : Date.parse(t);
  if (!Number.isFinite(ms)) {
    throw new UserError(
      `--since "${text}" is not a time`,
      'Write an ISO 8601 time (2024-05-01T10:00:00Z), epoch milliseconds, or a span back from now (30s, 15m, 2h, 1d)',
    );
  }
  return ms;
}

/** The payload as `az` shows it: JSON when it is JSON, else text; bytes that are not UTF-8 as base64. */
export function decodePayload(body: Buffer, contentType?: string): { payload: unknown; base64?: true } {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    return { payload: body.toString('base64'), base64: true };
  }
  const trimmed = text.trim();
  const saysJson = !!contentType && /json/i.test(contentType);
  if (saysJson || trimmed.startsWith('{') || trimmed.startsWith('[')) {
    try {
      return { payload: JSON.parse(text) };
    } catch {
      // not JSON after all: show the text
    }
  }
  return { payload: text };
}

/** One event in `az iot hub monitor-events` shape. */
export function azEvent(e: EventJson, withProperties: boolean): { event: Record<string, unknown> } {
  const body = Buffer.from(e.body, 'base64');
  const contentType = e.systemProperties['content-type'];
  const { payload, base64 } = decodePayload(body, typeof contentType === 'string' ? contentType : undefined);
  const event: Record<string, unknown> = {
    origin: e.deviceId,
    module: e.moduleId ?? '',
    interface: e.systemProperties['iothub-interface-id'] ?? '',
    component: e.systemProperties['dt-subject'] ?? '',
    payload,
  };
  if (base64) event.payloadEncoding = 'base64';
  if (withProperties) {
    event.properties = { system: e.systemProperties, application: e.properties };
    event.annotations = { ...e.annotations, 'x-strata-sequence-number': e.sequenceNumber };
  }
  return { event };
}

interface MonitorFlags extends HubAccessFlags {
  device?: string;
  module?: string;
  since?: string;
  properties?: boolean;
  timeout: number;
  count?: number;
  pretty?: boolean;
}

function positiveInt(name: string, allowZero: boolean) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || (!allowZero && n === 0)) {
      throw new InvalidArgumentError(`${name} must be a whole number${allowZero ? '' : ' above 0'}.`);
    }
    return n;
  };
}

async function monitor(flags: MonitorFlags): Promise<void> {
  if (flags.module !== undefined && flags.device === undefined) throw new UserError('--module needs --device too');
  const sinceMs = flags.since === undefined ? undefined : parseSince(flags.since);
  const client = await openServiceClient(flags);
  const deadline = flags.timeout > 0 ? Date.now() + flags.timeout * 1000 : Infinity;
  let stopped = false;
  const stop = () => {
    stopped = true;
    client.close();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const filter = new URLSearchParams();
  if (flags.device !== undefined) filter.set('device', flags.device);
  if (flags.module !== undefined) filter.set('module', flags.module);
  let position: URLSearchParams = new URLSearchParams(
    sinceMs === undefined ? { from: 'end' } : { since: new Date(sinceMs).toISOString() },
  );
  let printed = 0;
  try {
    while (!stopped) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      const wait = Math.max(0, Math.min(POLL_WAIT_S, Math.floor(left / 1000)));
      const query = new URLSearchParams([...position, ...filter, ['limit', '1000'], ['wait', String(wait)]]);
      let page: EventPageJson;
      try {
        page = (await client.request<EventPageJson>('GET', `/events?${query}`)).body;
      } catch (err) {
        if (stopped) break;
        throw err;
      }
      for (const e of page.events) {
        const json = azEvent(e, !!flags.properties);
        process.stdout.write(`${flags.pretty ? JSON.stringify(json, null, 2) : JSON.stringify(json)}\n`);
        printed += 1;
        if (flags.count !== undefined && printed >= flags.count) return;
      }
      position = new URLSearchParams({ from: String(page.nextSequenceNumber) });
      if (wait === 0 && page.events.length === 0)
        await new Promise((r) => setTimeout(r, Math.min(250, Math.max(0, deadline - Date.now()))));
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    client.close();
  }
}

/** Adds `monitor-events` to the `hub` command group (creating the group if nobody has). */
export function registerMonitorEventsCommand(program: Command): void {
  const hub = program.commands.find((c) => c.name() === 'hub') ?? program.command('hub').description('the root hub');
  withHubAccessFlags(
    hub
      .command('monitor-events')
      .description(
        "print the hub's telemetry as it arrives, one JSON object per message (the shape of `az iot hub monitor-events`)",
      )
      .option('--device <id>', "only this device's messages")
      .option('--module <id>', "only this module's messages (with --device)")
      .option(
        '--since <time>',
        'start at this enqueued time instead of now: ISO 8601, epoch ms, or a span back such as 15m, 2h, 1d',
      )
      .option('--properties', 'also print system and application properties and the annotations the hub stamped')
      .option(
        '--timeout <seconds>',
        'stop after this many seconds (0: run until interrupted)',
        positiveInt('--timeout', true),
        0,
      )
      .option('--count <n>', 'stop after printing this many messages', positiveInt('--count', false))
      .option('--pretty', 'indent the JSON (one object over several lines)'),
  ).action(action((flags: MonitorFlags) => monitor(flags)));
}
