import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { mountSmallDisk, type SmallDisk } from '../helpers/tmpfs-disk.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import type { EventJson, EventPageJson } from '../../src/hub/service-messaging.ts';
import { eventHubsConnectionString } from '../../src/hub/local.ts';
import { partitionOf } from '../../src/store/event-stream.ts';
import {
  createSasDevice,
  deviceToken,
  rawRequest,
  serviceClient,
  serviceToken,
} from '../fixtures/service-messaging-helpers.ts';
import { startEventHubsClient, type EhClient } from '../fixtures/event-hubs-helpers.ts';

/**
 * A hub whose disk fills up while devices send: appends fail, the disk is freed, devices send
 * again, twice over. Every message acknowledged to a device must then be read, exactly once and
 * nothing before the start, from every start position by every reader: the REST `/events` API,
 * its server-sent-events form, `strata hub monitor-events` (`--since`) and the Event Hubs
 * endpoint with the official @azure/event-hubs client; and by readers that followed the stream
 * live while the failures happened.
 */

const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const DEVICES = ['holes-a', 'holes-b'];
/** Concurrent posts per device in a round: a failing commit then holds several messages. */
const PER_ROUND = 2;

const cleanups: Array<() => unknown> = [];
let disk: SmallDisk | undefined;
let hub: HubProcess;
let svc: ServiceClient;
let eh: EhClient;
const keys = new Map<string, string>();
/** Message ids acknowledged (204) to the devices, in the order acknowledged. */
const acked: string[] = [];
let refused = 0;
/** Every acknowledged message as the REST API reads it from 0, in sequence order. */
let stream: EventJson[] = [];
let liveCli: { stop(): Promise<string>; output(): string } | undefined;
let liveSse: Sse | undefined;

before(async () => {
  disk = mountSmallDisk({ after: (fn) => cleanups.push(fn) }, 16 * 1024 * 1024);
  if (!disk) return;
  // No free-space reserve: the appends themselves must fail at COMMIT, as on a disk another
  // program fills, which is what leaves holes behind (the reserve's refusals leave none).
  hub = await startHubProcess({
    dataDir: disk.dir,
    env: { STRATA_LOG_LEVEL: process.env.HUB_LOG ?? 'fatal', STRATA_DISK_RESERVE_MB: '0' },
  });
  svc = serviceClient(hub);
  for (const d of DEVICES) keys.set(d, (await createSasDevice(svc, hub, d)).key);
  assert.notEqual(partitionOf(DEVICES[0]!, 4), partitionOf(DEVICES[1]!, 4), 'the devices use two partitions');

  // Readers that follow the stream while the disk fills and is freed.
  const startedAt = Date.now();
  eh = startEventHubsClient(hub, { connectionString: eventHubsConnectionString(hub.dataDir) });
  await eh.must({ op: 'subscribe', sub: 'live', startPosition: { offset: '-1' }, maxBatchSize: 5 });
  liveSse = await openSse('/events?from=0');
  liveCli = startCli(['--since', String(startedAt - 1000)]);

  let n = 0;
  const round = async (): Promise<boolean> => {
    const sends = DEVICES.flatMap((d) => Array.from({ length: PER_ROUND }, () => post(d, `${d}-${n++}`)));
    const ok = await Promise.all(sends);
    return ok.every((x) => !x);
  };
  const phase = async (rounds: number) => {
    for (let i = 0; i < rounds; i++) await round();
  };
  const failSome = async () => {
    disk!.fill();
    let inARow = 0;
    for (let i = 0; i < 100 && inARow < 3; i++) inARow = (await round()) ? inARow + 1 : 0;
    disk!.free();
    assert.equal(inARow, 3, 'sends fail on the full disk');
  };
  await phase(3);
  await failSome();
  await phase(3);
  await failSome();
  await phase(3);
  assert.ok(refused >= 12, `messages were refused (${refused})`);
  stream = await restRead(0, 1000);
});

after(async () => {
  liveSse?.close();
  await liveCli?.stop().catch(() => undefined);
  await eh?.stop().catch(() => undefined);
  svc?.close();
  disk?.free();
  if (process.env.HUB_LOG) console.log(hub?.output());
  await hub?.stop();
  for (const fn of cleanups.reverse()) await fn();
});

/** One message over the HTTPS device API; true when acknowledged. */
async function post(deviceId: string, id: string): Promise<boolean> {
  const res = await rawRequest(hub, {
    method: 'POST',
    path: `/devices/${deviceId}/messages/events?api-version=2021-04-12`,
    headers: {
      authorization: deviceToken(hub, keys.get(deviceId)!, deviceId),
      'iothub-messageid': id,
      'iothub-contenttype': 'application/json',
    },
    body: JSON.stringify({ id, pad: 'x'.repeat(1500) }),
  });
  if (res.status === 204) {
    acked.push(id);
    return true;
  }
  assert.ok(res.status >= 500, `a full disk is the hub's failure, not the device's: ${res.status} ${res.text}`);
  refused++;
  return false;
}

/** The REST reader: pages of `limit` from `from` until the end of the stream. */
async function restRead(from: number, limit: number): Promise<EventJson[]> {
  const out: EventJson[] = [];
  let position = from;
  for (let pages = 0; pages < 1000; pages++) {
    const page = (await svc.request<EventPageJson>('GET', `/events?from=${position}&limit=${limit}`)).body;
    out.push(...page.events);
    if (page.events.length === 0) return out;
    position = page.nextSequenceNumber;
  }
  throw new Error(`reading from ${from} did not reach the end`);
}

const idOf = (e: EventJson) => String(e.systemProperties['message-id']);

/** What a reader starting at sequence number `from` must get. */
const expectedFrom = (from: number) => stream.filter((e) => e.sequenceNumber >= from).map(idOf);

interface Sse {
  events: EventJson[];
  close(): void;
}

function openSse(path: string, headers: Record<string, string> = {}): Promise<Sse> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: hub.address,
        port: hub.httpsPort,
        path,
        ca: hub.caPem,
        agent: false,
        headers: { accept: 'text/event-stream', authorization: serviceToken(svc), ...headers },
      },
      (res) => {
        const events: EventJson[] = [];
        let buffer = '';
        res.on('data', (c: Buffer) => {
          buffer += c.toString();
          let idx: number;
          while ((idx = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, idx);
            buffer = buffer.slice(idx + 2);
            for (const line of block.split('\n'))
              if (line.startsWith('data: ')) events.push(JSON.parse(line.slice(6)) as EventJson);
          }
        });
        res.on('error', () => undefined);
        resolve({ events, close: () => req.destroy() });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** `strata hub monitor-events --properties` as a user runs it; stop() interrupts it and gives its output. */
function startCli(args: string[]): {
  stop(): Promise<string>;
  output(): string;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
} {
  const child = spawn(
    process.execPath,
    [
      STRATA,
      'hub',
      'monitor-events',
      '--properties',
      '--hub-connection-string',
      hub.connectionString,
      '--ca',
      hub.caPath,
      ...args,
    ],
    {
      env: { ...process.env, STRATA_HUB_CONNECTION_STRING: undefined, STRATA_CA: undefined, STRATA_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
  return {
    done,
    output: () => stdout,
    async stop() {
      child.kill('SIGINT');
      return (await done).stdout;
    },
  };
}

const cliIds = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.trim())
    .map((l) =>
      String(
        (JSON.parse(l) as { event: { properties: { system: Record<string, unknown> } } }).event.properties.system[
          'message-id'
        ],
      ),
    );

async function until(what: string, check: () => boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs `fn` over `items`, `n` at a time. */
async function eachLimit<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** Every sequence number from before the first to past the last. */
function positions(): number[] {
  const last = stream[stream.length - 1]!.sequenceNumber;
  return Array.from({ length: last + 3 }, (_, i) => i);
}

test('the REST reader from position 0 gets every acknowledged message once, and no number went to a refused one', (t) => {
  if (!disk) return t.skip('needs root to mount a small tmpfs');
  t.diagnostic(`${acked.length} messages acknowledged, ${refused} refused on the full disk`);
  assert.deepEqual(stream.map(idOf).sort(), [...acked].sort(), 'every acknowledged message, each once');
  assert.deepEqual(
    stream.map((e) => e.sequenceNumber),
    stream.map((_, i) => i + 1),
    'sequence numbers count the stored messages, without holes',
  );
  for (const p of new Set(stream.map((e) => e.partition))) {
    const inPart = stream.filter((e) => e.partition === p).map((e) => e.partitionSequenceNumber);
    assert.deepEqual(
      inPart,
      inPart.map((_, i) => i),
      `partition ${p}: sequence numbers without holes`,
    );
  }
});

test('readers that followed the stream live across the failures got every acknowledged message once', async (t) => {
  if (!disk) return t.skip('needs root to mount a small tmpfs');
  const want = stream.map(idOf);
  await until('the live SSE reader', () => liveSse!.events.length >= want.length).catch(() => undefined);
  assert.deepEqual(liveSse!.events.map(idOf), want, 'SSE');
  await until('the live Event Hubs reader', () => eh.events('live').length >= want.length).catch(() => undefined);
  assert.deepEqual(
    eh
      .events('live')
      .map((e) => String(e.messageId))
      .sort(),
    [...want].sort(),
    'Event Hubs',
  );
  // The CLI prints as it reads, once it has started (seconds on a busy machine): wait for its lines.
  await until('the live CLI', () => liveCli!.output().split('\n').length - 1 >= want.length, 60_000).catch(
    () => undefined,
  );
  assert.deepEqual(cliIds(await liveCli!.stop()), want, 'monitor-events --since');
});

test('REST /events from every position, in pages of every size, gets exactly the messages from there on', async (t) => {
  if (!disk) return t.skip('needs root to mount a small tmpfs');
  await eachLimit(positions(), 4, async (from) => {
    for (const limit of [1, 3, 1000]) {
      assert.deepEqual((await restRead(from, limit)).map(idOf), expectedFrom(from), `from ${from}, limit ${limit}`);
    }
    for (const d of DEVICES) {
      const page = (await svc.request<EventPageJson>('GET', `/events?from=${from}&device=${d}&limit=1000`)).body;
      assert.deepEqual(
        page.events.map(idOf),
        stream.filter((e) => e.sequenceNumber >= from && e.deviceId === d).map(idOf),
        `${d} from ${from}`,
      );
    }
  });
});

test('SSE from every position (from= and Last-Event-ID) gets exactly the messages from there on', async (t) => {
  if (!disk) return t.skip('needs root to mount a small tmpfs');
  await eachLimit(positions(), 6, async (from) => {
    const want = expectedFrom(from);
    // Last-Event-ID is what a browser's EventSource sends when it reconnects; it wins over from=.
    for (const open of [
      () => openSse(`/events?from=${from}`),
      () => openSse('/events?from=0', { 'last-event-id': String(Math.max(0, from - 1)) }),
    ]) {
      const sse = await open();
      try {
        await until(`SSE from ${from}`, () => sse.events.length >= want.length, 15_000).catch(() => undefined);
        // Anything more would come in the same page.
        await new Promise((r) => setTimeout(r, 100));
        assert.deepEqual(sse.events.map(idOf), want, `SSE from ${from}`);
      } finally {
        sse.close();
      }
    }
  });
});

test('monitor-events --since every enqueued time gets exactly the messages from there on', async (t) => {
  if (!disk) return t.skip('needs root to mount a small tmpfs');
  const times = [...new Set(stream.map((e) => Date.parse(e.enqueuedTime)))];
  const last = times[times.length - 1]!;
  const cases = [times[0]! - 60_000, ...times, last + 1];
  await eachLimit(cases, 3, async (since) => {
    const want = stream.filter((e) => Date.parse(e.enqueuedTime) >= since).map(idOf);
    // --count ends it once all are printed; what is missing runs into --timeout.
    const args = ['--since', String(since), '--timeout', want.length ? '40' : '2'];
    if (want.length) args.push('--count', String(want.length));
    const r = await startCli(args).done;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(cliIds(r.stdout), want, `--since ${new Date(since).toISOString()}`);
  });
});

interface EhCase {
  sub: string;
  partition: number;
  startPosition: Record<string, unknown>;
  /** The messages expected, in partition order. */
  want: EventJson[];
}

/** One subscription of one reader from one position, until what is expected came (and a moment more). */
async function checkEventHubs(eh: EhClient, c: EhCase): Promise<void> {
  await eh.must({
    op: 'subscribe',
    sub: c.sub,
    partitionId: String(c.partition),
    startPosition: c.startPosition,
    maxBatchSize: 7,
  });
  await until(c.sub, () => eh.events(c.sub).length >= c.want.length, 20_000).catch(() => undefined);
  await new Promise((r) => setTimeout(r, c.want.length ? 100 : 1500));
  await eh.must({ op: 'unsubscribe', sub: c.sub });
  const got = eh.events(c.sub);
  assert.deepEqual(
    got.map((e) => String(e.messageId)),
    c.want.map(idOf),
    c.sub,
  );
  assert.deepEqual(
    got.map((e) => e.sequenceNumber),
    c.want.map((e) => e.partitionSequenceNumber),
    `${c.sub}: the sequence numbers the REST API gives`,
  );
  assert.deepEqual(eh.errors(c.sub), [], `${c.sub}: no errors`);
}

test('Event Hubs readers from every sequence number and every offset of each partition get exactly the messages from there on', async (t) => {
  if (!disk) return t.skip('needs root to mount a small tmpfs');
  await eh.must({ op: 'unsubscribe', sub: 'live' });
  // A consumer client takes one subscription of a partition at a time: a few clients, each in turn.
  const readers = [
    eh,
    ...Array.from({ length: 3 }, () =>
      startEventHubsClient(hub, { connectionString: eventHubsConnectionString(hub.dataDir) }),
    ),
  ];
  t.after(() => Promise.all(readers.slice(1).map((r) => r.stop().catch(() => undefined))));
  const cases: EhCase[] = [];
  for (const p of [...new Set(stream.map((e) => e.partition))]) {
    const inPart = stream.filter((e) => e.partition === p);
    const top = inPart[inPart.length - 1]!.partitionSequenceNumber;
    for (let s = 0; s <= top + 2; s++) {
      cases.push({
        sub: `p${p}-seq-${s}`,
        partition: p,
        startPosition: { sequenceNumber: s, isInclusive: true },
        want: inPart.filter((e) => e.partitionSequenceNumber >= s),
      });
    }
    // A checkpoint: resume after an event's offset.
    for (const e of inPart) {
      cases.push({
        sub: `p${p}-off-${e.offset}`,
        partition: p,
        startPosition: { offset: String(e.offset), isInclusive: false },
        want: inPart.filter((x) => x.offset > e.offset),
      });
    }
  }
  const idle = readers.slice();
  await eachLimit(cases, readers.length, async (c) => {
    const reader = idle.pop()!;
    try {
      await checkEventHubs(reader, c);
    } finally {
      idle.push(reader);
    }
  });
});
