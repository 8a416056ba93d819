import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GatewayMetrics } from '../../src/edge/metrics.ts';
import { metricValue } from '../helpers/edge.ts';

test('per-endpoint store figures are read at scrape time: queue length, expired and set-aside messages', async () => {
  let endpoints = [
    { endpoint: '$upstream', queueLength: 7, expired: 1, setAside: 2 },
    { endpoint: '/modules/m/inputs/in', queueLength: 0, expired: 0, setAside: 0 },
  ];
  const m = new GatewayMetrics(
    {
      connectedClients: () => 3,
      maxConnectedClients: () => 100,
      endpoints: () => endpoints,
      upstreamConnected: () => true,
    },
    { edge_device: 'gw' },
  );
  let text = await m.text();
  assert.equal(metricValue(text, 'edgehub_queue_length', { endpoint: '$upstream', edge_device: 'gw' }), 7);
  assert.equal(metricValue(text, 'edgehub_messages_expired_total', { endpoint: '$upstream' }), 1);
  assert.equal(metricValue(text, 'edgehub_messages_set_aside_total', { endpoint: '$upstream' }), 2);
  assert.equal(metricValue(text, 'edgehub_messages_set_aside_total', { endpoint: '/modules/m/inputs/in' }), 0);
  assert.equal(metricValue(text, 'edgehub_connected_clients'), 3);
  assert.equal(metricValue(text, 'edgehub_upstream_connected'), 1);
  // The store's totals, not sums of scrapes: a second scrape shows the figures as they are then.
  endpoints = [{ endpoint: '$upstream', queueLength: 0, expired: 1, setAside: 3 }];
  text = await m.text();
  assert.equal(metricValue(text, 'edgehub_messages_set_aside_total', { endpoint: '$upstream' }), 3);
  assert.equal(metricValue(text, 'edgehub_queue_length', { endpoint: '$upstream' }), 0);
  assert.equal(
    metricValue(text, 'edgehub_queue_length', { endpoint: '/modules/m/inputs/in' }),
    undefined,
    'a gone endpoint is no longer listed',
  );
});
