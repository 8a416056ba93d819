import type { C2DFeedbackRecord } from '../model/c2d.ts';

/** A C2D feedback record as IoT Hub's service side sends it, over AMQP and HTTPS alike. */
export function feedbackJson(r: C2DFeedbackRecord): Record<string, string> {
  const out: Record<string, string> = {
    originalMessageId: r.originalMessageId,
    description: r.description,
    deviceId: r.deviceId,
    enqueuedTimeUtc: new Date(r.enqueuedTimeUtc).toISOString(),
    statusCode: r.statusCode,
  };
  if (r.deviceGenerationId !== undefined) out.deviceGenerationId = r.deviceGenerationId;
  return out;
}
