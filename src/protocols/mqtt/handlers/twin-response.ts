import { EngineError } from '../../../model/errors.ts';
import { childLog, wireText } from '../../../util/log.ts';
import type { ClientConnection } from '../types.ts';

const log = childLog('mqtt');

/** Answers a twin request on `$iothub/twin/res/{status}/`, if the client subscribed to it. */
export function twinResponse(
  conn: ClientConnection,
  status: number,
  rid: string,
  body: Buffer,
  version?: number,
): void {
  if (conn.state !== 'connected' || !conn.session?.subscriptions.has('twin-responses')) {
    if (conn.state === 'connected')
      log.warn(
        { who: conn.who(), rid: wireText(rid) },
        'twin response dropped: the client has not subscribed to $iothub/twin/res/#',
      );
    return;
  }
  const v = version === undefined ? '' : `&$version=${version}`;
  conn.publish(`$iothub/twin/res/${status}/?$rid=${encodeURIComponent(rid)}${v}`, body, 0);
}

export function twinError(conn: ClientConnection, rid: string, err: unknown): void {
  const status = err instanceof EngineError ? statusOf(err) : 500;
  const message = err instanceof Error ? err.message : String(err);
  if (!(err instanceof EngineError)) log.error({ err, who: conn.who() }, 'twin operation failed');
  else log.warn({ who: conn.who(), code: err.code }, `twin request refused: ${message}`);
  twinResponse(conn, status, rid, Buffer.from(JSON.stringify({ errorCode: status * 1000 + 1, message })));
}

function statusOf(err: EngineError): number {
  switch (err.code) {
    case 'bad-request':
    case 'too-large':
      return 400;
    case 'not-found':
      return 404;
    case 'precondition':
      return 412;
    case 'throttled':
      return 429;
    case 'unauthorized':
    case 'forbidden':
    case 'disabled':
    case 'expired':
      return 401;
    default:
      return 500;
  }
}
