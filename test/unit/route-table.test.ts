import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_ROUTE_PRIORITY,
  DEFAULT_TIME_TO_LIVE_SECS,
  parseEdgeHubDesired,
  routeTableFromEdgeHubDesired,
  RouteTable,
  type RouteDefinition,
} from '../../src/routing/route-table.ts';
import { parseRoute, sourceMatches } from '../../src/routing/parser.ts';
import { RouteConfigError } from '../../src/routing/errors.ts';
import { UserError } from '../../src/util/errors.ts';
import type { RoutableMessage } from '../../src/routing/message.ts';

function msg(source: string, app: Record<string, string> = {}, sys: Record<string, string> = {}): RoutableMessage {
  return {
    source,
    body: Buffer.from('{}'),
    systemProperties: { connectionDeviceId: 'd1', ...sys },
    appProperties: app,
  };
}

const deviceMsg = msg('/messages');
const m1out1 = msg('/messages/modules/m1/outputs/out1', {}, { connectionModuleId: 'm1', outputName: 'out1' });
const m1out10 = msg('/messages/modules/m1/outputs/out10', {}, { connectionModuleId: 'm1', outputName: 'out10' });
const m10out1 = msg('/messages/modules/m10/outputs/out1', {}, { connectionModuleId: 'm10', outputName: 'out1' });
const twinMsg = msg('/twinChangeNotifications');

function ids(table: RouteTable, m: RoutableMessage): string[] {
  return table.match(m).map((d) => d.endpoint.id);
}

describe('sources', () => {
  const cases: Array<[source: string, matches: RoutableMessage[], not: RoutableMessage[]]> = [
    ['/messages/*', [deviceMsg, m1out1, m10out1], [twinMsg]],
    ['/messages', [deviceMsg, m1out1], [twinMsg]],
    ['/messages/modules/m1/*', [m1out1, m1out10], [deviceMsg, m10out1, twinMsg]],
    ['/messages/modules/m1', [m1out1], [m10out1, deviceMsg]],
    ['/messages/modules/m1/outputs/out1', [m1out1], [m1out10, m10out1, deviceMsg]],
    ['/MESSAGES/Modules/M1/Outputs/OUT1', [m1out1], [m1out10]],
    ['/messages/modules/*', [m1out1, m10out1], [deviceMsg]],
    ['/twinChangeNotifications', [twinMsg], [deviceMsg, m1out1]],
    ['/*', [deviceMsg, m1out1, twinMsg], []],
  ];
  for (const [source, yes, no] of cases) {
    it(`FROM ${source}`, () => {
      const table = RouteTable.fromDefinitions([{ name: 'r', route: `FROM ${source} INTO $upstream` }]);
      for (const m of yes) assert.deepEqual(ids(table, m), ['$upstream'], `${source} should take ${m.source}`);
      for (const m of no) assert.deepEqual(ids(table, m), [], `${source} should not take ${m.source}`);
    });
  }

  it('normalises the source: trailing "*" and "/" trimmed, case-insensitive prefix with a "/" boundary', () => {
    assert.equal(parseRoute('FROM /messages/* INTO $upstream').sourcePrefix, '/messages/');
    assert.equal(parseRoute('FROM /* INTO $upstream').sourcePrefix, '/');
    assert.equal(
      parseRoute('FROM /messages/modules/m1/outputs/out1 INTO $upstream').sourcePrefix,
      '/messages/modules/m1/outputs/out1/',
    );
    assert.ok(sourceMatches('/messages/', '/Messages/'));
    assert.ok(!sourceMatches('/messages/modules/m1/', '/messages/modules/m10/outputs/o'));
  });

  it('accepts a module named like a keyword or number in a path', () => {
    const table = RouteTable.fromDefinitions([
      { name: 'r', route: 'FROM /messages/modules/123/outputs/into INTO $upstream' },
    ]);
    assert.deepEqual(ids(table, msg('/messages/modules/123/outputs/into')), ['$upstream']);
  });
});

describe('sinks', () => {
  it('$upstream in any case is the one upstream endpoint', () => {
    const table = RouteTable.fromDefinitions([
      { name: 'a', route: 'FROM /messages/* INTO $upstream' },
      { name: 'b', route: 'FROM /messages/* INTO $UPSTREAM' },
    ]);
    assert.deepEqual(
      table.match(deviceMsg).map((d) => d.endpoint),
      [{ kind: 'upstream', id: '$upstream' }],
    );
  });

  it('BrokeredEndpoint: function name in any case, either quote, address normalised', () => {
    const written = [
      'BrokeredEndpoint("/modules/filter/inputs/in1")',
      "brokeredendpoint('/modules/filter/inputs/in1')",
      'BROKEREDENDPOINT(" /modules/filter/inputs/in1/ ")',
      'BrokeredEndpoint("modules/filter/inputs/in1")',
    ];
    for (const sink of written) {
      const r = parseRoute(`FROM /messages/* INTO ${sink}`);
      assert.deepEqual(
        r.endpoint,
        { kind: 'module', id: '/modules/filter/inputs/in1', moduleId: 'filter', input: 'in1' },
        sink,
      );
    }
    const table = RouteTable.fromDefinitions(
      written.map((sink, i) => ({ name: `r${i}`, route: `FROM /messages/* INTO ${sink}` })),
    );
    assert.equal(table.match(deviceMsg).length, 1, 'the same module input written four ways is one endpoint');
    assert.equal(table.endpoints().length, 1);
  });

  it('module ids and inputs keep their case (different endpoints)', () => {
    const table = RouteTable.fromDefinitions([
      { name: 'a', route: 'FROM /messages/* INTO BrokeredEndpoint("/modules/Filter/inputs/in1")' },
      { name: 'b', route: 'FROM /messages/* INTO BrokeredEndpoint("/modules/filter/inputs/in1")' },
    ]);
    assert.deepEqual(ids(table, deviceMsg), ['/modules/Filter/inputs/in1', '/modules/filter/inputs/in1']);
  });

  it('a route can send a module output to another module and the parent', () => {
    const table = RouteTable.fromDefinitions([
      {
        name: 'toFilter',
        route:
          'FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint("/modules/m1/inputs/in")',
      },
      { name: 'filtered', route: 'FROM /messages/modules/m1/outputs/out1 INTO $upstream' },
    ]);
    assert.deepEqual(ids(table, deviceMsg), ['/modules/m1/inputs/in']);
    assert.deepEqual(ids(table, m1out1), ['$upstream']);
    assert.deepEqual(ids(table, m1out10), []);
  });
});

describe('priority, TTL and one delivery per endpoint', () => {
  const defs: RouteDefinition[] = [
    { name: 'plain', route: 'FROM /messages/* INTO $upstream' },
    {
      name: 'alerts',
      route: "FROM /messages/* WHERE alert = 'high' INTO $upstream",
      priority: 0,
      timeToLiveSecs: 86400,
    },
    {
      name: 'warnings',
      route: "FROM /messages/* WHERE alert = 'high' OR alert = 'medium' INTO $upstream",
      priority: 3,
    },
    {
      name: 'local',
      route: 'FROM /messages/* INTO BrokeredEndpoint("/modules/store/inputs/in")',
      priority: 5,
      timeToLiveSecs: 60,
    },
  ];
  const table = RouteTable.fromDefinitions(defs, 7200);

  it('a plain string route has the lowest priority and the global TTL', () => {
    const d = table.match(msg('/messages'));
    assert.deepEqual(d, [
      { endpoint: { kind: 'upstream', id: '$upstream' }, priority: DEFAULT_ROUTE_PRIORITY, ttlSecs: 7200 },
      {
        endpoint: { kind: 'module', id: '/modules/store/inputs/in', moduleId: 'store', input: 'in' },
        priority: 5,
        ttlSecs: 60,
      },
    ]);
  });

  it('several matching routes to one endpoint deliver once, with the highest priority (lowest number)', () => {
    const high = table.match(msg('/messages', { alert: 'high' }));
    assert.equal(high.length, 2);
    assert.deepEqual(high[0], { endpoint: { kind: 'upstream', id: '$upstream' }, priority: 0, ttlSecs: 86400 });
    const medium = table.match(msg('/messages', { alert: 'medium' }));
    assert.deepEqual(
      medium[0],
      { endpoint: { kind: 'upstream', id: '$upstream' }, priority: 3, ttlSecs: 7200 },
      'TTL 0 means the global TTL',
    );
  });

  it('routes whose condition is false or undefined do not raise the priority', () => {
    const d = table.match(msg('/messages', { alert: 'low' }));
    assert.equal(d[0].priority, DEFAULT_ROUTE_PRIORITY);
  });

  it('among routes of the same priority the longest TTL wins, whatever their order', () => {
    const a: RouteDefinition = {
      name: 'short',
      route: 'FROM /messages/* INTO $upstream',
      priority: 1,
      timeToLiveSecs: 30,
    };
    const b: RouteDefinition = {
      name: 'long',
      route: 'FROM /messages/* INTO $upstream',
      priority: 1,
      timeToLiveSecs: 600,
    };
    assert.equal(RouteTable.fromDefinitions([a, b]).match(deviceMsg)[0].ttlSecs, 600);
    assert.equal(RouteTable.fromDefinitions([b, a]).match(deviceMsg)[0].ttlSecs, 600);
  });

  it('a negative global TTL means messages never expire', () => {
    const t = RouteTable.fromDefinitions([{ name: 'r', route: 'FROM /* INTO $upstream' }], -1);
    assert.equal(t.match(deviceMsg)[0].ttlSecs, Infinity);
  });

  it('rejects priorities outside 0-9 and bad TTLs, naming the route', () => {
    for (const bad of [10, -1, 1.5]) {
      assert.throws(
        () => RouteTable.fromDefinitions([{ name: 'r1', route: 'FROM /* INTO $upstream', priority: bad }]),
        (e: unknown) =>
          e instanceof RouteConfigError && e.routeName === 'r1' && /priority .* 0 \(highest\) to 9/.test(e.message),
      );
    }
    for (const bad of [-5, 2.5]) {
      assert.throws(
        () => RouteTable.fromDefinitions([{ name: 'r2', route: 'FROM /* INTO $upstream', timeToLiveSecs: bad }]),
        (e: unknown) => e instanceof RouteConfigError && /^route "r2": timeToLiveSecs/.test(e.message),
      );
    }
  });

  it('a route that does not compile names the route and the position', () => {
    assert.throws(
      () => RouteTable.fromDefinitions([{ name: 'hot', route: 'FROM /messages/* WHERE temp > 30 INTO $upstream' }]),
      (e: unknown) =>
        e instanceof RouteConfigError &&
        e instanceof UserError &&
        e.message.startsWith('route "hot": position 29: invalid operands to binary operator ">"') &&
        /as_number/.test(e.hint ?? ''),
    );
  });

  it('lists each endpoint once', () => {
    assert.deepEqual(
      table.endpoints().map((e) => e.id),
      ['$upstream', '/modules/store/inputs/in'],
    );
  });
});

describe('$edgeHub desired properties', () => {
  it("reads the seeds' deployment (schema 1.1, plain string route, TTL 7200)", () => {
    const desired = {
      routes: { route: 'FROM /messages/* INTO $upstream' },
      schemaVersion: '1.1',
      storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
    };
    const cfg = parseEdgeHubDesired(desired);
    assert.deepEqual(cfg, {
      schemaVersion: '1.1',
      routes: [{ name: 'route', route: 'FROM /messages/* INTO $upstream' }],
      timeToLiveSecs: 7200,
    });
    const table = routeTableFromEdgeHubDesired(desired);
    assert.deepEqual(table.match(deviceMsg), [
      { endpoint: { kind: 'upstream', id: '$upstream' }, priority: DEFAULT_ROUTE_PRIORITY, ttlSecs: 7200 },
    ]);
    assert.equal(table.routes[0].name, 'route');
  });

  it('schema 1.0: plain strings only; empty routes skipped; storeAndForwardConfiguration optional', () => {
    const cfg = parseEdgeHubDesired({
      schemaVersion: '1.0',
      routes: { a: 'FROM /messages/* INTO $upstream', b: '  ', c: null },
    });
    assert.deepEqual(cfg.routes, [{ name: 'a', route: 'FROM /messages/* INTO $upstream' }]);
    assert.equal(cfg.timeToLiveSecs, DEFAULT_TIME_TO_LIVE_SECS);
    assert.equal(parseEdgeHubDesired({ schemaVersion: '1.0' }, { defaultTimeToLiveSecs: 60 }).timeToLiveSecs, 60);
    assert.equal(
      parseEdgeHubDesired({ schemaVersion: '1.1', routes: {}, storeAndForwardConfiguration: {} }).timeToLiveSecs,
      DEFAULT_TIME_TO_LIVE_SECS,
    );
    assert.throws(
      () =>
        parseEdgeHubDesired({ schemaVersion: '1.0', routes: { a: { route: 'FROM /* INTO $upstream', priority: 1 } } }),
      (e: unknown) =>
        e instanceof RouteConfigError &&
        e.routeName === 'a' &&
        /plain strings/.test(e.message) &&
        /1\.1/.test(e.hint ?? ''),
    );
  });

  for (const version of ['1.1', '1.2', '1.3', '1.2.0']) {
    it(`schema ${version}: route objects with priority and timeToLiveSecs, mixed with strings`, () => {
      const table = routeTableFromEdgeHubDesired({
        schemaVersion: version,
        routes: {
          all: 'FROM /messages/* INTO $upstream',
          urgent: { route: "FROM /messages/* WHERE alert = 'high' INTO $upstream", priority: 0, timeToLiveSecs: 86400 },
          toModule: { route: 'FROM /messages/* INTO BrokeredEndpoint("/modules/m/inputs/i")' },
        },
        storeAndForwardConfiguration: { timeToLiveSecs: 3600 },
        brokerConfiguration: { authorizations: [] },
      });
      assert.deepEqual(
        table.match(msg('/messages', { alert: 'high' })).map((d) => [d.endpoint.id, d.priority, d.ttlSecs]),
        [
          ['$upstream', 0, 86400],
          ['/modules/m/inputs/i', DEFAULT_ROUTE_PRIORITY, 3600],
        ],
      );
    });
  }

  it('field names are case-insensitive; negative TTL = never expire; store limit read', () => {
    const cfg = parseEdgeHubDesired({
      SchemaVersion: 1.1,
      Routes: { r: { Route: 'FROM /* INTO $upstream', Priority: 2, TimeToLiveSecs: 5 } },
      StoreAndForwardConfiguration: { TimeToLiveSecs: -1, storeLimits: { maxSizeBytes: 1048576 } },
    });
    assert.deepEqual(cfg, {
      schemaVersion: '1.1',
      routes: [{ name: 'r', route: 'FROM /* INTO $upstream', priority: 2, timeToLiveSecs: 5 }],
      timeToLiveSecs: Infinity,
      maxStoreSizeBytes: 1048576,
    });
  });

  const rejects: Array<[what: string, desired: unknown, pattern: RegExp]> = [
    ['not an object', 'routes', /must be a JSON object/],
    ['no schemaVersion', { routes: {} }, /no schemaVersion/],
    [
      'schemaVersion 2.0',
      { schemaVersion: '2.0', routes: {}, storeAndForwardConfiguration: {} },
      /unsupported \$edgeHub schemaVersion "2\.0"/,
    ],
    ['schemaVersion 1.4', { schemaVersion: '1.4', routes: {}, storeAndForwardConfiguration: {} }, /unsupported/],
    ['schemaVersion "one"', { schemaVersion: 'one' }, /unsupported/],
    [
      '1.1 without routes',
      { schemaVersion: '1.1', storeAndForwardConfiguration: { timeToLiveSecs: 1 } },
      /no "routes"/,
    ],
    [
      '1.1 without storeAndForwardConfiguration',
      { schemaVersion: '1.1', routes: {} },
      /no "storeAndForwardConfiguration"/,
    ],
    [
      '1.1 empty route text',
      { schemaVersion: '1.1', routes: { r: ' ' }, storeAndForwardConfiguration: {} },
      /^route "r": the route is empty/,
    ],
    [
      '1.1 route of the wrong type',
      { schemaVersion: '1.1', routes: { r: 5 }, storeAndForwardConfiguration: {} },
      /^route "r": malformed route/,
    ],
    [
      '1.1 route object without text',
      { schemaVersion: '1.1', routes: { r: { priority: 1 } }, storeAndForwardConfiguration: {} },
      /no "route" text/,
    ],
    [
      'priority as a string',
      {
        schemaVersion: '1.1',
        routes: { r: { route: 'FROM /* INTO $upstream', priority: '1' } },
        storeAndForwardConfiguration: {},
      },
      /priority "1"/,
    ],
    [
      'TTL not a whole number',
      { schemaVersion: '1.1', routes: {}, storeAndForwardConfiguration: { timeToLiveSecs: 1.5 } },
      /not a whole number/,
    ],
    [
      'routes not an object',
      { schemaVersion: '1.1', routes: ['FROM /* INTO $upstream'], storeAndForwardConfiguration: {} },
      /"routes" must be an object/,
    ],
  ];
  for (const [what, desired, pattern] of rejects) {
    it(`rejects ${what} with a clear error`, () => {
      assert.throws(
        () => routeTableFromEdgeHubDesired(desired),
        (e: unknown) => e instanceof RouteConfigError && pattern.test(e.message),
      );
    });
  }

  it('a syntax error in one route names the route, the position and what was expected', () => {
    assert.throws(
      () =>
        routeTableFromEdgeHubDesired({
          schemaVersion: '1.1',
          routes: { good: 'FROM /messages/* INTO $upstream', broken: 'FROM /messages/* WHER x INTO $upstream' },
          storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
        }),
      (e: unknown) =>
        e instanceof RouteConfigError &&
        e.message === 'route "broken": position 18: expected WHERE or INTO, found "WHER"',
    );
  });
});

describe('deliveries worked out once per source', () => {
  const def = (name: string, route: string): RouteDefinition => ({ name, route });
  it('a table without conditions gives every message of a source the same deliveries, without reading the message', () => {
    const table = RouteTable.fromDefinitions([
      def('up', 'FROM /messages/* INTO $upstream'),
      def('m', 'FROM /messages/modules/m1/* INTO BrokeredEndpoint("/modules/f/inputs/in")'),
    ]);
    const unreadable = (source: string): RoutableMessage => ({
      source,
      body: Buffer.alloc(0),
      appProperties: {},
      get systemProperties(): Record<string, string> {
        throw new Error('no condition, so nothing but the source may be read');
      },
    });
    const first = table.match(unreadable('/messages'));
    assert.deepEqual(
      first.map((d) => d.endpoint.id),
      ['$upstream'],
    );
    assert.equal(table.match(unreadable('/messages')), first, 'the same list again');
    assert.deepEqual(ids(table, unreadable('/messages/modules/m1/outputs/o')), ['$upstream', '/modules/f/inputs/in']);
  });
  it('a table with a condition still decides for each message', () => {
    const table = RouteTable.fromDefinitions([def('hot', 'FROM /messages/* WHERE temp = "hot" INTO $upstream')]);
    assert.deepEqual(ids(table, msg('/messages', { temp: 'hot' })), ['$upstream']);
    assert.deepEqual(ids(table, msg('/messages', { temp: 'cold' })), []);
  });
});
