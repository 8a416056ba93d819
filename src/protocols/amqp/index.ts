import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { engineOf } from '../../engine/hub-attach.ts';
import type { HubNode } from '../../hub/hub.ts';
import { hubIdentitySource } from '../../hub/scope-api.ts';
import { UserError } from '../../util/errors.ts';
import { clientCertificateOf } from '../http/client-cert.ts';
import { webSocketDispatcher } from '../ws.ts';
import { preAuthOf } from '../pre-auth.ts';
import { AMQP_WS_SUBPROTOCOL, AmqpHead } from './head.ts';
import { attachEventHubs } from './event-hubs/index.ts'; // issue 6

export { AMQP_WS_SUBPROTOCOL, AmqpHead, type AmqpHeadOptions, type TlsListenOptions } from './head.ts';
export type { LinkContext, LinkHandler, LinkRoute, LinkRole, Outcome } from './links.ts';
export { CreditWindow, SendQueue } from './links.ts';
export type { AmqpConnection } from './connection.ts';
export type { Claim, IdentityClaim, PolicyClaim } from './claims.ts';
export { AmqpRefusal, CONDITION, amqpErrorOf } from './errors.ts';

const heads = new WeakMap<HubNode, AmqpHead>();

/** The AMQP head of a hub node (issue 6 adds its Event Hubs routes to it). */
export function amqpHeadOf(node: HubNode): AmqpHead | undefined {
  return heads.get(node);
}

/**
 * Starts the AMQP head of a hub: AMQP over TLS on `node.ports.amqp` and AMQP over WebSockets
 * on the HTTPS server's `/$iothub/websocket`. Needs the device engine attached first.
 */
export async function attachAmqp(node: HubNode): Promise<AmqpHead> {
  const engine = engineOf(node);
  if (!engine) throw new Error('the AMQP head needs the device engine: attach it first');
  const head = new AmqpHead({
    engine,
    hostName: node.hostname,
    policy: (name) => node.registry.getPolicy(name),
    maxMessageBytes: engine.options.maxMessageBytes,
    preAuth: node.preAuth,
    // Edge hubs below act for the identities in their scope (on-behalf-of), checked against the registry.
    onBehalfOf: hubIdentitySource(node),
    // issue 6: Event Hubs clients put the port into token audiences when it is not their default 5671.
    extraHostNames: node.ports.amqp && node.ports.amqp !== 5671 ? [`${node.hostname}:${node.ports.amqp}`] : undefined,
  });
  let addr;
  try {
    addr = await head.listen({ host: node.bind, port: node.ports.amqp, cert: node.tls.certPem, key: node.tls.keyPem });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
      throw new UserError(`cannot listen for AMQP on ${node.bind}:${node.ports.amqp}: ${(err as Error).message}`, 'Choose another --amqp-port or --bind address');
    }
    throw err;
  }
  heads.set(node, head);
  node.onClose(() => head.close());
  node.ports.amqp = addr.port;
  node.listeners.push({ name: 'AMQP (TLS)', url: `amqps://${node.hostname}:${addr.port}` });

  webSocketDispatcher(node.https).register(AMQP_WS_SUBPROTOCOL, (stream: Duplex, req: IncomingMessage) => {
    const remote = `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
    head.accept(stream, { transport: 'amqp-ws', remote, clientCertificate: clientCertificateOf(req.socket), preAuth: preAuthOf(req.socket) });
  });
  const httpsPort = node.ports.https;
  node.listeners.push({ name: 'AMQP over WebSockets', url: `wss://${node.hostname}${httpsPort === 443 || httpsPort === 0 ? '' : `:${httpsPort}`}/$iothub/websocket` });
  attachEventHubs(node, head); // issue 6: the Event Hubs compatible receive side ($management, partition receivers)
  return head;
}
