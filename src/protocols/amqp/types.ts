import type { Engine } from '../../engine/engine.ts';

/** The part of the engine the AMQP head uses. */
export type AmqpEngine = Pick<Engine, 'authenticate' | 'connect' | 'sendC2D' | 'pendingFeedback' | 'acknowledgeFeedback'>;
