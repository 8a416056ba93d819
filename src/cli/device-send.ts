import { readFileSync } from 'node:fs';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { ServiceError } from '../hub/service-client.ts';
import { UserError } from '../util/errors.ts';
import { openServiceClient, withHubAccessFlags, type HubAccessFlags } from './hub-access.ts';
import { action } from './run.ts';

/** `strata device send ID`: queues a cloud-to-device message through the hub's service API. */

interface SendFlags extends HubAccessFlags {
  body?: string;
  bodyFile?: string;
  props?: string[];
  messageId?: string;
  correlationId?: string;
  contentType?: string;
  contentEncoding?: string;
  ack?: string;
  ttl?: number;
  expiry?: string;
  json?: boolean;
}

/** `k=v` into a pair; the value may itself contain `=`. */
export function parseProp(text: string, acc: Array<[string, string]>): Array<[string, string]> {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new UserError(`--props "${text}" is not key=value`, 'Write --props name=value, once per property');
  return [...acc, [text.slice(0, eq), text.slice(eq + 1)]];
}

function collectProp(text: string, acc: string[] | undefined): string[] {
  return [...(acc ?? []), text];
}

function positiveSeconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('--ttl must be a positive number of seconds.');
  return n;
}

async function send(deviceId: string, flags: SendFlags): Promise<void> {
  if (flags.body !== undefined && flags.bodyFile !== undefined)
    throw new UserError('give either --body or --body-file, not both');
  if (flags.body === undefined && flags.bodyFile === undefined)
    throw new UserError('the message has no body', 'Give --body TEXT or --body-file FILE');
  const props = (flags.props ?? []).reduce<Array<[string, string]>>((acc, p) => parseProp(p, acc), []);
  const envelope: Record<string, unknown> = {};
  if (flags.bodyFile !== undefined) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(flags.bodyFile);
    } catch (err) {
      throw new UserError(
        `cannot read --body-file ${flags.bodyFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
    envelope.bodyBase64 = bytes.toString('base64');
  } else {
    envelope.body = flags.body;
  }
  if (props.length > 0) envelope.properties = Object.fromEntries(props);
  if (flags.messageId !== undefined) envelope.messageId = flags.messageId;
  if (flags.correlationId !== undefined) envelope.correlationId = flags.correlationId;
  if (flags.contentType !== undefined) envelope.contentType = flags.contentType;
  if (flags.contentEncoding !== undefined) envelope.contentEncoding = flags.contentEncoding;
  if (flags.ack !== undefined) envelope.ack = flags.ack;
  if (flags.ttl !== undefined) envelope.ttlSeconds = flags.ttl;
  if (flags.expiry !== undefined) {
    const ms = /^\d+$/.test(flags.expiry.trim()) ? Number(flags.expiry) : Date.parse(flags.expiry);
    if (!Number.isFinite(ms))
      throw new UserError(`--expiry "${flags.expiry}" is not a time`, 'Write an ISO 8601 time or epoch milliseconds');
    envelope.expiryTimeUtc = new Date(ms).toISOString();
  }

  const client = await openServiceClient(flags);
  try {
    const res = await client.request<{ deviceId: string; messageId: string }>(
      'POST',
      `/devices/${encodeURIComponent(deviceId)}/messages/deviceBound`,
      { body: envelope },
    );
    const { messageId } = res.body;
    process.stdout.write(
      flags.json
        ? `${JSON.stringify({ deviceId, messageId }, null, 2)}\n`
        : `queued message ${messageId} for ${deviceId}\n`,
    );
  } catch (err) {
    if (err instanceof ServiceError && err.code === 'DeviceMaximumQueueDepthExceeded') {
      throw new UserError(
        err.message,
        `The device must receive and settle waiting messages first (or let them expire)`,
      );
    }
    throw err;
  } finally {
    client.close();
  }
}

/** Adds `send` to the `device` command group (creating the group if nobody has). */
export function registerDeviceSendCommand(program: Command): void {
  const device =
    program.commands.find((c) => c.name() === 'device') ?? program.command('device').description('device identities');
  withHubAccessFlags(
    device
      .command('send')
      .description(
        "send a cloud-to-device message; it waits in the device's queue (50 at most) until the device takes it",
      )
      .argument('<id>', 'device id')
      .option('--body <text>', 'message body (UTF-8 text)')
      .option('--body-file <file>', 'message body read from a file (any bytes)')
      .option('--props <key=value>', 'application property; repeat for more', collectProp)
      .option('--message-id <id>', 'message id (default: one the hub makes up)')
      .option('--correlation-id <id>', 'correlation id')
      .option('--content-type <type>', 'content type, e.g. application/json')
      .option('--content-encoding <enc>', 'content encoding, e.g. utf-8')
      .addOption(
        new Option('--ack <kind>', 'feedback wanted about delivery').choices(['none', 'positive', 'negative', 'full']),
      )
      .option('--ttl <seconds>', "expire the message after this long (default: the hub's, 1 hour)", positiveSeconds)
      .option('--expiry <time>', 'expire the message at this time (ISO 8601 or epoch ms)')
      .option('--json', 'print {"deviceId", "messageId"} as JSON'),
  ).action(action((id: string, flags: SendFlags) => send(id, flags)));
}
