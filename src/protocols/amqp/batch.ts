import rhea, { type Message as AmqpMessage } from 'rhea';

/**
 * IoT Hub's batched message: one AMQP transfer whose `message-format` is 0x80013700 and whose
 * body is a list of data sections, each holding one whole AMQP-encoded message. A gateway sends
 * its upstream telemetry this way, so one transfer, one disposition and one store commit carry
 * many messages instead of one each. The batch is accepted or refused as a whole.
 */

export const BATCH_FORMAT = 0x80013700;

/** IoT Hub's limit for one batch (encoded), the same as for a single message. */
export const MAX_BATCH_BYTES = 256 * 1024;

/** The transfer payload of a batch made of already encoded messages. */
export function encodeBatch(encoded: readonly Buffer[]): Buffer {
  return rhea.message.encode({ body: rhea.message.data_sections([...encoded]) } as AmqpMessage) as unknown as Buffer;
}

export class BatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BatchError';
  }
}

/**
 * The messages inside a received batch. rhea decodes only transfers of format 0, so a batch
 * arrives as its raw payload; an already decoded one is taken too.
 */
export function messagesOfBatch(batch: Buffer | AmqpMessage): AmqpMessage[] {
  let outer: AmqpMessage;
  try {
    outer = Buffer.isBuffer(batch) ? (rhea.message.decode(batch) as unknown as AmqpMessage) : batch;
  } catch (err) {
    throw new BatchError(`the batch cannot be decoded: ${(err as Error).message}`);
  }
  const body = outer.body as { typecode?: number; content?: unknown; multiple?: boolean } | undefined;
  if (!body || body.typecode !== 0x75) throw new BatchError('a batched message (format 0x80013700) must have a body of data sections');
  const parts = (body.multiple ? body.content : [body.content]) as unknown[];
  return parts.map((part, i) => {
    if (!Buffer.isBuffer(part)) throw new BatchError(`section ${i} of the batch is not binary data`);
    try {
      return rhea.message.decode(part) as unknown as AmqpMessage;
    } catch (err) {
      throw new BatchError(`message ${i} of the batch cannot be decoded: ${(err as Error).message}`);
    }
  });
}
