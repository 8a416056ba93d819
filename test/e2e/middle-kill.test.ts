/**
 * A hub and three gateway layers; official device SDK leaves stream telemetry with message ids
 * through L2, the middle layer, which is killed with SIGKILL and started again ten times in one
 * run: leaves of L2 itself (Mqtt and Amqp, a few messages in flight each) and a leaf under L3.
 * After every cycle, every acknowledged message is at the hub exactly once. A leaf whose
 * acknowledgement died with L2 sends the message again, same id, once L2 is back: L2 must
 * recognise it as what it stored before it was killed (store/resend-window.ts), and L3's
 * batches that L2 had passed on must be stored once by their origin.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import type { EventPageJson } from '../../src/hub/service-messaging.ts';
import { startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { chainAddresses, startChain } from '../helpers/nested.ts';
import { eventually, openSdkLeaf } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Amqp } = require('azure-iot-device-amqp');

const [hubAddr, l1Addr, l2Addr, l3Addr] = chainAddresses();
const CYCLES = 10;

const layers: EdgeSetup[] = [];
/** What the streaming test found at the hub more than once (checked by the test after it). */
let twiceAtHub: string[] | undefined;
const gws: Array<GatewayProcess | undefined> = [];
const cleanups: Array<() => unknown> = [];

before(async () => {
  await startChain('mk', [hubAddr, l1Addr, l2Addr, l3Addr], { layers, gws, cleanups });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

/**
 * A leaf sending `window` messages at a time, each with its own message id, until stopped; what
 * arrived at the hub is read as it comes (`arrived`: message number -> copies at the hub).
 */
async function streamingLeaf(
  t: { after(fn: () => unknown): void },
  layer: EdgeSetup,
  id: string,
  Transport: unknown,
  window: number,
  pauseMs: number,
) {
  const leaf = await layer.createLeaf(id);
  const client = await openSdkLeaf(t, leaf.connectionString, Transport, layer.rootPem);
  const acked = new Set<number>();
  const arrived = new Map<number, number>();
  let from = 0;
  let next = 0;
  let stop = false;
  let failure: unknown;
  const slot = async () => {
    while (!stop) {
      const i = next++;
      const m = new Message(JSON.stringify({ i }));
      m.messageId = `${id}-${i}`;
      try {
        await client.sendEvent(m);
      } catch (err) {
        failure = err;
        return;
      }
      acked.add(i);
      await new Promise((r) => setTimeout(r, pauseMs));
    }
  };
  const slots = Array.from({ length: window }, slot);
  const done = async () => {
    stop = true;
    await Promise.all(slots);
  };
  t.after(done);
  const readNew = async () => {
    for (;;) {
      const page = (
        await layers[0]!.svc.request<EventPageJson>(
          'GET',
          `/events?device=${encodeURIComponent(leaf.deviceId)}&from=${from}&limit=1000`,
        )
      ).body;
      for (const e of page.events) {
        const i = JSON.parse(Buffer.from(e.body, 'base64').toString()).i as number;
        arrived.set(i, (arrived.get(i) ?? 0) + 1);
      }
      // An empty page may still move on: the hub scans for one device in bounded windows.
      if (page.nextSequenceNumber <= from) return;
      from = page.nextSequenceNumber;
    }
  };
  return { id, acked, arrived, readNew, failure: () => failure, done };
}

describe('a middle layer killed with SIGKILL', { timeout: 300_000 }, () => {
  test('ids reused for other content, or repeated on one connection, are new messages: every one reaches the hub', async (t) => {
    const leaf = await layers[1]!.createLeaf('mk-reuse');
    const send = async (client: any, body: string) => {
      const m = new Message(body);
      m.messageId = 'same-id';
      await client.sendEvent(m);
    };
    const first = await openSdkLeaf(t, leaf.connectionString, Mqtt, layers[1]!.rootPem);
    await send(first, 'reading 20');
    await send(first, 'reading 20');
    await send(first, 'reading 21');
    await first.close();
    const second = await openSdkLeaf(t, leaf.connectionString, Amqp, layers[1]!.rootPem);
    await send(second, 'reading 22');
    const bodies = await eventually('four messages at the hub', async () => {
      const page = (
        await layers[0]!.svc.request<EventPageJson>('GET', `/events?device=${leaf.deviceId}&from=0&limit=100`)
      ).body;
      const got = page.events.map((e) => Buffer.from(e.body, 'base64').toString());
      return got.length >= 4 ? got : undefined;
    });
    assert.deepEqual(bodies, ['reading 20', 'reading 20', 'reading 21', 'reading 22']);
  });

  test(`L2 killed and restarted ${CYCLES} times while leaves of L2 and of L3 stream: every acknowledged message reaches the hub once`, async (t) => {
    const underL3 = await streamingLeaf(t, layers[2]!, 'mk-l3-mqtt', Mqtt, 1, 20);
    const leaves = [
      underL3,
      await streamingLeaf(t, layers[1]!, 'mk-l2-mqtt', Mqtt, 8, 5),
      await streamingLeaf(t, layers[1]!, 'mk-l2-amqp', Amqp, 8, 5),
    ];
    await eventually('a stream under way from every leaf', () => leaves.every((l) => l.acked.size >= 50), 30_000);
    const twice: string[] = [];
    const checkLeaf = async (leaf: (typeof leaves)[number], whole: boolean, when: string) => {
      assert.equal(leaf.failure(), undefined, `${leaf.id}: a send failed: ${String(leaf.failure())}`);
      const acked = [...leaf.acked];
      if (whole) {
        await eventually(
          `${when}: every acknowledged message of ${leaf.id} at the hub`,
          async () => {
            await leaf.readNew();
            return acked.every((i) => leaf.arrived.has(i));
          },
          60_000,
        );
      } else {
        await leaf.readNew();
      }
      for (const [i, n] of leaf.arrived)
        if (n > 1 && !twice.includes(`${leaf.id} #${i} x${n}`)) twice.push(`${leaf.id} #${i} x${n}`);
    };
    let resent = 0;
    const resentAtL2 = async () =>
      Number(/^edgehub_messages_resent_total(?:\{[^}]*\})? (\d+)/m.exec(await gws[1]!.metrics())?.[1] ?? 0);
    for (let cycle = 1; cycle <= CYCLES; cycle++) {
      // At a different point of the streams each time.
      await new Promise((r) => setTimeout(r, randomInt(50, 400)));
      resent += await resentAtL2();
      const began = Date.now();
      await gws[1]!.kill9();
      gws[1] = undefined;
      // L3 keeps acknowledging its leaf: it buffers while its parent is gone.
      const atKill = underL3.acked.size;
      await eventually(
        'acknowledged messages under L3 while L2 is down',
        () => underL3.acked.size >= atKill + 30,
        15_000,
      );
      gws[1] = await startGatewayProcess({
        configPath: layers[1]!.configPath,
        dataDir: layers[1]!.dataDir,
        address: l2Addr,
      });
      const atStart = leaves.map((l) => l.acked.size);
      await eventually(
        'every leaf acknowledged again after L2 is back',
        () => leaves.every((l, k) => l.acked.size >= atStart[k]! + 30),
        60_000,
      );
      const back = Date.now();
      // L2's own leaves are checked in full every cycle. L3's link to L2 backs off further with
      // every cycle (it never stays up the 10 s that resets it), so its leaf is checked in full
      // at the end; what arrived of it is checked for copies every cycle.
      for (const leaf of leaves) await checkLeaf(leaf, leaf !== underL3, `cycle ${cycle}`);
      t.diagnostic(
        `cycle ${cycle}: L2 down and back in ${back - began} ms, checked in ${Date.now() - back} ms; ${leaves.map((l) => `${l.id} ${l.acked.size}`).join(', ')} acknowledged; twice at the hub so far: ${twice.length === 0 ? 'none' : twice.join(', ')}`,
      );
    }
    for (const leaf of leaves) await leaf.done();
    for (const leaf of leaves) await checkLeaf(leaf, true, 'the end');
    resent += await resentAtL2();
    t.diagnostic(`resends L2 recognised and did not store again: ${resent}`);
    twiceAtHub = twice;
  });

  // A leaf's resend can come long after its first copy: the official SDK retries one send for
  // up to 240 s across reconnections (75 s was seen here), so L2's resend window must outlast it.
  test('... and none of them twice', () => {
    assert.ok(twiceAtHub !== undefined, 'the streaming test ran');
    assert.deepEqual(twiceAtHub, [], 'no message twice at the hub');
  });
});
