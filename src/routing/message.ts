/**
 * The message shape routes are evaluated against, and a per-message view that does the
 * lookups the route language needs (once per message, however many routes read it).
 */
import { bodyPathPresent, readBodyPath, type BodyValue, type PathStep } from './body-path.ts';

export interface RoutableMessage {
  body: Buffer;
  /**
   * Keyed by the route language's names: messageId, correlationId, userId, to, contentType,
   * contentEncoding, connectionDeviceId, connectionModuleId, connectionAuthMethod,
   * connectionDeviceGenerationId, enqueuedTime, outputName, creationTime, messageSchema,
   * dt-subject. An absent or undefined value is "not set".
   */
  systemProperties: Record<string, string | undefined>;
  appProperties: Record<string, string>;
  /** e.g. '/messages', '/messages/modules/m1/outputs/out1', '/twinChangeNotifications'. */
  source: string;
}

/** The system property names the route language knows (others can still be read with `$name`). */
export const SYSTEM_PROPERTY_NAMES = [
  'messageId',
  'correlationId',
  'userId',
  'to',
  'contentType',
  'contentEncoding',
  'connectionDeviceId',
  'connectionModuleId',
  'connectionAuthMethod',
  'connectionDeviceGenerationId',
  'enqueuedTime',
  'outputName',
  'creationTime',
  'messageSchema',
  'dt-subject',
] as const;

type ParsedBody = { root: Record<string, unknown> } | { error: string };

/**
 * Property names are matched case-insensitively (the original keeps both property bags in
 * case-insensitive dictionaries, so `KEY1` reads `key1`). The body is decoded and parsed at
 * most once, and only when a route asks for it.
 */
export class MessageView {
  private body?: ParsedBody;

  constructor(readonly message: RoutableMessage) {}

  app(name: string): string | undefined {
    return lookup(this.message.appProperties, name);
  }

  system(name: string): string | undefined {
    return lookup(this.message.systemProperties, name);
  }

  /** A `$body` value; undefined when the body is not readable JSON (wrong content type or encoding, bad JSON, not an object). */
  bodyValue(steps: PathStep[]): BodyValue {
    const b = this.parsedBody();
    return 'root' in b ? readBodyPath(b.root, steps) : undefined;
  }

  /** For twin_change_includes: true when the path exists (even as an object or null), undefined when the body is unreadable. */
  bodyHas(steps: PathStep[]): boolean | undefined {
    const b = this.parsedBody();
    return 'root' in b ? bodyPathPresent(b.root, steps) : undefined;
  }

  /** Why the body cannot be queried, or undefined when it can. */
  bodyError(): string | undefined {
    const b = this.parsedBody();
    return 'error' in b ? b.error : undefined;
  }

  private parsedBody(): ParsedBody {
    this.body ??= parseBody(this.message, this);
    return this.body;
  }
}

// Property bags are small, so a scan beats building a lower-cased index per message.
function lookup(props: Record<string, string | undefined>, name: string): string | undefined {
  if (Object.hasOwn(props, name)) {
    const v = props[name];
    if (v !== undefined) return v;
  }
  let lower: string | undefined;
  for (const k of Object.keys(props)) {
    if (k.length !== name.length || k === name) continue;
    lower ??= name.toLowerCase();
    if (k.toLowerCase() === lower) {
      const v = props[k];
      if (v !== undefined) return v;
    }
  }
  return undefined;
}

function parseBody(message: RoutableMessage, view: MessageView): ParsedBody {
  const contentType = view.system('contentType');
  if (contentType === undefined) return { error: 'contentType is not set' };
  // Exact media type only, as in the original: "application/json; charset=utf-8" is not JSON to it.
  if (contentType.toLowerCase() !== 'application/json')
    return { error: `contentType "${contentType}" is not application/json` };
  const encoding = view.system('contentEncoding');
  if (encoding === undefined) return { error: 'contentEncoding is not set' };
  let text: string;
  switch (encoding.toLowerCase()) {
    case 'utf-8':
      text = message.body.toString('utf8');
      break;
    case 'utf-16':
      text = message.body.toString('utf16le');
      break;
    case 'utf-32':
      text = decodeUtf32le(message.body);
      break;
    default:
      return { error: `contentEncoding "${encoding}" is not utf-8, utf-16 or utf-32` };
  }
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch {
    return { error: 'the body is not valid JSON' };
  }
  if (root === null || typeof root !== 'object' || Array.isArray(root))
    return { error: 'the body is not a JSON object' };
  return { root: root as Record<string, unknown> };
}

function decodeUtf32le(buf: Buffer): string {
  let out = '';
  for (let i = 0; i < buf.length; i += 4) {
    if (i + 4 > buf.length) {
      out += '\uFFFD';
      break;
    }
    const cp = buf.readUInt32LE(i);
    out += cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? '\uFFFD' : String.fromCodePoint(cp);
  }
  return out;
}
