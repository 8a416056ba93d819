export { AMQP_WS_SUBPROTOCOL, AmqpHead, type AmqpHeadOptions, type TlsListenOptions } from './head.ts';
export type { LinkContext, LinkHandler, LinkRoute, LinkRole, Outcome } from './links.ts';
export { CreditWindow, SendQueue } from './links.ts';
export type { AmqpConnection } from './connection.ts';
export type { Claim, IdentityClaim, PolicyClaim } from './claims.ts';
export { AmqpRefusal, CONDITION, amqpErrorOf } from './errors.ts';
