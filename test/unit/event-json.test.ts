import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { StoredEvent } from '../../src/model/events.ts';
import { eventJson, eventJsonText } from '../../src/hub/event-json.ts';

function event(over: Partial<StoredEvent> = {}, message: Partial<StoredEvent['message']> = {}): StoredEvent {
  return {
    sequenceNumber: 42,
    partition: 3,
    partitionSequenceNumber: 7,
    offset: 1234,
    enqueuedTime: Date.UTC(2026, 11, 2, 1, 2, 3, 456),
    deviceId: 'dev-1',
    authMethod: '{"scope":"device","type":"sas","issuer":"iothub"}',
    messageSource: 'Telemetry',
    message: { body: Buffer.from('{"t":21.5}'), properties: {}, ...message },
    ...over,
  };
}

test('the event written directly is the same text JSON.stringify writes for the event object', () => {
  const cases: StoredEvent[] = [
    event(),
    event({ moduleId: 'sensor', authGenerationId: '6371' }),
    event(
      {},
      {
        messageId: 'm "quoted" \\ back',
        correlationId: 'c-1',
        userId: 'ü-user',
        to: '/devices/x/messages/events',
        expiry: 1796170000000,
        contentType: 'application/json',
        contentEncoding: 'utf-8',
        creationTime: '2026-12-02T00:00:00Z',
        component: 'thermostat1',
        interfaceId: 'dtmi:com:example;1',
        outputName: 'out1',
        properties: { b: '1', a: 'line\nbreak', '10': 'integer-like key', 'emoji 🙂': '\u0000\u001f', '': 'empty key' },
        body: Buffer.from([0, 255, 1, 254]),
      },
    ),
    event({ deviceId: 'dev with spaces & "quotes"', moduleId: '' }, { messageId: '', contentType: '' }),
    event({}, { body: Buffer.alloc(0) }),
  ];
  // Twice over, the second time backwards: what is reused between events (the sender's
  // annotations, the enqueued time) must never leak from one event into another.
  cases.push(
    event({ authMethod: '{"scope":"module","type":"x509Certificate","issuer":"iothub"}', enqueuedTime: 0 }),
    event({ authGenerationId: 'other' }),
  );
  for (const e of [...cases, ...[...cases].reverse()]) {
    const text = eventJsonText(e);
    assert.equal(text, JSON.stringify(eventJson(e)));
    assert.deepEqual(JSON.parse(text), eventJson(e));
  }
});
