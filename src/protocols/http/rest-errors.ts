import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { AccessDenied } from '../../identity/policies.ts';
import { HubError } from '../../model/errors.ts';
import { refusals, sourceAddress, wireText } from '../../util/log.ts';

/**
 * IoT Hub's REST error body, `{"Message":"ErrorCode:{code};{text}"}`: written by every REST API
 * a node serves (sendError), read by every client of one (parseErrorBody).
 */

/**
 * Every refusal in IoT Hub's shape: `{"Message":"ErrorCode:{code};{text}"}`. The SDKs split the
 * message on ';', so the text itself must not contain one.
 */
export function sendError(reply: FastifyReply, req: FastifyRequest, log: Logger, err: unknown): FastifyReply {
  let status: number;
  let code: string;
  let message: string;
  if (err instanceof HubError) {
    ({ status, code, message } = err);
  } else if (err instanceof AccessDenied) {
    ({ status, code, message } = err);
  } else if (isClientError(err)) {
    status = err.statusCode;
    code = status === 413 ? 'RequestEntityTooLarge' : 'ArgumentInvalid';
    message = err.message;
  } else {
    status = 500;
    code = 'ServerError';
    message = 'internal error; the hub log has the details';
    log.error({ err, method: req.method, url: wireText(req.url) }, 'service API request failed');
  }
  if (status === 401 || status === 403)
    refusals.info(
      log,
      sourceAddress(`${req.socket.remoteAddress}:0`),
      { method: req.method, url: wireText(req.url), status, code },
      wireText(message, 512),
    );
  else if (status < 500)
    // A lookup of something absent (a tool checking before it creates) is an answer, not news.
    log[status === 404 && req.method === 'GET' ? 'debug' : 'info'](
      { method: req.method, url: wireText(req.url), status, code },
      wireText(message, 512),
    );
  const text = message.replace(/;/g, ',');
  return reply
    .code(status)
    .header('content-type', 'application/json; charset=utf-8')
    .send({
      Message: `ErrorCode:${code};${text}`,
      ExceptionMessage: `Tracking ID:${req.id}-TimeStamp:${new Date().toISOString()}`,
    });
}

function isClientError(err: unknown): err is { statusCode: number; message: string } {
  const s = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof s === 'number' && s >= 400 && s < 500;
}

/** Reads `{"Message":"ErrorCode:X;text"}` (and a few looser shapes) into code and text. */
export function parseErrorBody(body: string, status: number): { code: string; text: string } {
  let message: string | undefined;
  try {
    const parsed = JSON.parse(body) as Record<string, unknown>;
    const m = parsed.Message ?? parsed.message;
    if (typeof m === 'string') message = m;
    if (typeof parsed.errorCode === 'string' || typeof parsed.errorCode === 'number') {
      return { code: String(parsed.errorCode), text: message ?? body };
    }
  } catch {
    // not JSON: fall through with the raw text
  }
  const text = (message ?? body).trim();
  const m = /^ErrorCode:([^;]*);?(.*)$/s.exec(text);
  if (m) return { code: m[1]!.trim(), text: m[2]!.trim() || m[1]!.trim() };
  return { code: `HTTP${status}`, text: text || `HTTP status ${status}` };
}
