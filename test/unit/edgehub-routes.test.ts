/**
 * The gateway's route table across bad updates and restarts (issue 17, finding 5): the last
 * configuration that compiled is kept on disk and used at start-up before the cached twin; a
 * bad update is ignored (the previous table stays) and reported in `$edgeHub` reported
 * properties; with no deployment known, the default route sends telemetry upstream.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import type { TwinCollection } from '../../src/model/twin.ts';
import { DEFAULT_ROUTE, EdgeHubRoutes } from '../../src/edge/edgehub-routes.ts';
import { TwinCache } from '../../src/edge/twin-cache.ts';
import type { RoutableMessage } from '../../src/routing/message.ts';
import type { UpstreamIdentity } from '../../src/upstream/parent-link.ts';

const quiet = pino({ level: 'silent' });

const deviceMessage: RoutableMessage = {
  source: '/messages',
  body: Buffer.from('x'),
  systemProperties: { connectionDeviceId: 'leaf' },
  appProperties: {},
};
const moduleMessage: RoutableMessage = {
  source: '/messages/modules/m1/outputs/o1',
  body: Buffer.from('x'),
  systemProperties: { connectionDeviceId: 'gw', connectionModuleId: 'm1' },
  appProperties: {},
};

function deployment(routes: Record<string, unknown>, version: number): TwinCollection {
  return { schemaVersion: '1.1', routes, storeAndForwardConfiguration: { timeToLiveSecs: 3600 }, $version: version };
}

function setup(t: { after(fn: () => void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'strata-routes-'));
  const twins = TwinCache.open(join(dir, 'gateway.db'));
  t.after(() => {
    twins.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const lastGoodPath = join(dir, 'routes.json');
  const make = () => new EdgeHubRoutes({ edgeDeviceId: 'gw', twins, lastGoodPath, log: quiet });
  return { dir, twins, lastGoodPath, make };
}

/** An upstream `$edgeHub` channel whose twin the test sets, recording reported patches. */
function fakeChannel(desired: TwinCollection) {
  let push: (p: TwinCollection) => void = () => undefined;
  const reported: Array<Record<string, unknown>> = [];
  const channel = {
    twinGet: async () => ({ desired, reported: {} }),
    twinPatchReported: async (p: Record<string, unknown>) => {
      reported.push(p);
      return { version: reported.length };
    },
    onDesired: (cb: (p: TwinCollection) => void) => {
      push = cb;
    },
  } as unknown as UpstreamIdentity;
  const link = Object.assign(new EventEmitter(), { connected: true });
  return { channel, link, reported, push: (p: TwinCollection) => push(p) };
}

test('no deployment known: the default route takes device and module telemetry upstream', (t) => {
  const { make } = setup(t);
  const routes = make();
  routes.loadCached();
  assert.equal(routes.usingDefault, true);
  assert.deepEqual(
    routes.table.routes.map((r) => r.text),
    [DEFAULT_ROUTE.route],
  );
  assert.deepEqual(
    routes.table.match(deviceMessage).map((d) => d.endpoint.id),
    ['$upstream'],
  );
  assert.deepEqual(
    routes.table.match(moduleMessage).map((d) => d.endpoint.id),
    ['$upstream'],
  );
});

test('a bad update is ignored and reported; the kept file still holds the last good one, and a restart uses it over a bad cached twin', async (t) => {
  const { dir, twins, lastGoodPath, make } = setup(t);
  const good = deployment({ up: 'FROM /messages/modules/* INTO $upstream' }, 3);
  const up = fakeChannel(good);
  const routes = make();
  routes.loadCached();
  await routes.follow(up.channel, up.link);
  assert.equal(routes.usingDefault, false);
  assert.deepEqual(
    routes.table.routes.map((r) => r.name),
    ['up'],
  );
  assert.equal(routes.table.globalTtlSecs, 3600);
  assert.deepEqual(JSON.parse(readFileSync(lastGoodPath, 'utf8')).desired, good);
  assert.deepEqual(
    readdirSync(dir).filter((f) => f.endsWith('.tmp')),
    [],
    'no temporary file left behind',
  );

  // A pushed patch that breaks a route: refused, logged, reported; the table and the file stay.
  up.push({ routes: { up: 'FROM /nowhere INTO $upstream' }, $version: 4 });
  assert.deepEqual(
    routes.table.routes.map((r) => r.text),
    ['FROM /messages/modules/* INTO $upstream'],
  );
  assert.deepEqual(JSON.parse(readFileSync(lastGoodPath, 'utf8')).desired, good);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(up.reported[0], { lastDesiredVersion: 3, lastDesiredStatus: { code: 200, description: '' } });
  assert.equal(up.reported[1]?.lastDesiredVersion, 4);
  assert.equal((up.reported[1]?.lastDesiredStatus as { code: number } | undefined)?.code, 400);
  assert.match(
    (up.reported[1]?.lastDesiredStatus as { description: string } | undefined)?.description ?? '',
    /route "up": position 6: source "\/nowhere" matches no message/,
  );
  assert.equal(twins.get('gw', '$edgeHub')!.desired.$version, 4, 'the cache holds the bad version');

  // Restart: the kept routes win over the bad cached twin.
  const restarted = make();
  restarted.loadCached();
  assert.equal(restarted.usingDefault, false);
  assert.deepEqual(
    restarted.table.routes.map((r) => r.text),
    ['FROM /messages/modules/* INTO $upstream'],
  );
  assert.deepEqual(
    restarted.table.match(moduleMessage).map((d) => d.endpoint.id),
    ['$upstream'],
  );
});

test('a data directory without routes.json starts from a good cached twin (and keeps it); an unreadable routes.json is ignored', (t) => {
  const { twins, lastGoodPath, make } = setup(t);
  twins.put('gw', '$edgeHub', {
    desired: deployment({ mine: 'FROM /messages/* INTO BrokeredEndpoint("/modules/m/inputs/i")' }, 7),
    reported: {},
  });
  const routes = make();
  routes.loadCached();
  assert.deepEqual(
    routes.table.routes.map((r) => r.name),
    ['mine'],
  );
  assert.ok(existsSync(lastGoodPath));

  writeFileSync(lastGoodPath, '{ not json');
  const again = make();
  again.loadCached();
  assert.deepEqual(
    again.table.routes.map((r) => r.name),
    ['mine'],
  );
});

test('a deployment with an empty route set is honoured (nothing forwarded), unlike no deployment at all', async (t) => {
  const { make } = setup(t);
  const up = fakeChannel(deployment({}, 2));
  const routes = make();
  routes.loadCached();
  await routes.follow(up.channel, up.link);
  assert.equal(routes.usingDefault, false);
  assert.equal(routes.configured, false);
  assert.deepEqual(routes.table.match(deviceMessage), []);
  // The deployment removed at the hub (desired emptied): back to the default route.
  up.push({
    schemaVersion: null,
    routes: null,
    storeAndForwardConfiguration: null,
    $version: 3,
  } as unknown as TwinCollection);
  assert.equal(routes.usingDefault, true);
  assert.deepEqual(
    routes.table.match(deviceMessage).map((d) => d.endpoint.id),
    ['$upstream'],
  );
});
