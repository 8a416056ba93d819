import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { authMethodText } from '../../src/identity/auth-method.ts';
import { Availability } from '../../src/routing/pump.ts';
import type { QueuedMessage } from '../../src/store/message-store.ts';
import { storedMessageOf } from '../../src/store/sender-message.ts';
import { UpstreamError, type SendOutcome } from '../../src/upstream/errors.ts';
import { UpstreamTelemetryEndpoint } from '../../src/upstream/telemetry-endpoint.ts';

const auth = { identity: { deviceId: 'leaf1' }, kind: 'sas', authMethod: authMethodText('device', 'sas') } as const;

function endpointAnswering(outcome: SendOutcome): UpstreamTelemetryEndpoint {
  return new UpstreamTelemetryEndpoint(
    {
      availability: new Availability(true),
      isConnected: () => true,
      senderFor: () => ({ forward: async (messages) => messages.map(() => outcome) }),
      describeParent: () => 'the parent',
      stalled: () => undefined,
      stallMs: 5000,
      log: pino({ level: 'silent' }),
      originId: 'store-1',
    },
    100,
  );
}

const batch: QueuedMessage[] = [1, 2].map((seq) => ({
  seq,
  endpoint: '$upstream',
  priority: 0,
  enqueuedAt: 0,
  expiresAt: Infinity,
  message: storedMessageOf(auth, { body: Buffer.from(`m${seq}`), properties: {} }),
}));

async function failureOf(outcome: SendOutcome): Promise<UpstreamError> {
  const err = await endpointAnswering(outcome)
    .send(batch)
    .then(
      () => undefined,
      (e: unknown) => e,
    );
  assert.ok(err instanceof UpstreamError, `the batch failed with an UpstreamError: ${String(err)}`);
  return err;
}

test("a parent gateway waiting for its own parent ('parent-unreachable') asks for the batch again in a second, not after a growing backoff", async () => {
  const err = await failureOf({ ok: false, condition: 'strata:parent-unreachable', description: 'the hub is away' });
  assert.equal(err.condition, 'strata:parent-unreachable');
  assert.equal(err.retryAfterMs, 1000);
});

test('any other transient refusal leaves the retry to the backoff', async () => {
  const err = await failureOf({ ok: false, condition: 'com.microsoft:timeout', description: 'timed out' });
  assert.equal(err.retryAfterMs, undefined);
});
