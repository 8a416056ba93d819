import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runQuery, QueryError, type TwinJson } from '../../src/hub/query.ts';

const scope = (id: string) => `ms-azure-iot-edge://${id}-6378`;

function twin(deviceId: string, extra: Partial<TwinJson> = {}): TwinJson {
  return {
    deviceId,
    etag: 'AAAAAAAAAAE=',
    version: 2,
    status: 'enabled',
    tags: {},
    properties: { desired: { $version: 1, $metadata: {} }, reported: { $version: 1, $metadata: {} } },
    capabilities: { iotEdge: false },
    parentScopes: [],
    ...extra,
  };
}

const devices: TwinJson[] = [
  twin('edge-top', {
    capabilities: { iotEdge: true },
    deviceScope: scope('edge-top'),
    tags: { location: { region: 'EU', plant: 'Oslo' }, tier: 1 },
  }),
  twin('edge-mid', {
    capabilities: { iotEdge: true },
    deviceScope: scope('edge-mid'),
    parentScopes: [scope('edge-top')],
    tags: { location: { region: 'EU', plant: 'Bergen' }, tier: 2 },
  }),
  twin('leaf-1', {
    deviceScope: scope('edge-mid'),
    parentScopes: [scope('edge-mid')],
    tags: { location: { region: 'US' }, 'odd key': 'x', sensors: ['temp', 'hum'] },
    properties: {
      desired: { telemetry: { interval: 30 }, $version: 4 },
      reported: { telemetry: { interval: 60, status: 'ok' }, firmware: '1.2.0', battery: null, $version: 7 },
    },
  }),
  twin('leaf-2', {
    status: 'disabled',
    tags: { location: { region: 'US' }, owner: "O'Brien" },
    properties: { desired: { telemetry: { interval: 5 }, $version: 2 }, reported: { firmware: '1.10.0', $version: 3 } },
  }),
  twin('lonely'),
];

const modules: TwinJson[] = [
  { ...twin('edge-top'), moduleId: '$edgeAgent', properties: { desired: {}, reported: { runtime: 'docker' } } },
  { ...twin('edge-top'), moduleId: '$edgeHub' },
  { ...twin('edge-mid'), moduleId: '$edgeAgent' },
  { ...twin('leaf-1'), moduleId: 'filter', tags: { role: 'filter' } },
];

const source = { devices: () => devices, modules: () => modules };

const ids = (rows: object[]) =>
  rows.map((r) => {
    const t = r as TwinJson;
    return t.moduleId ? `${t.deviceId}/${t.moduleId}` : String(t.deviceId);
  });

// [query, expected device ids (in source order)]
const selects: Array<[string, string[]]> = [
  ['SELECT * FROM devices', ['edge-top', 'edge-mid', 'leaf-1', 'leaf-2', 'lonely']],
  ['select * from DEVICES', ['edge-top', 'edge-mid', 'leaf-1', 'leaf-2', 'lonely']],
  ["SELECT * FROM devices WHERE deviceId = 'leaf-1'", ['leaf-1']],
  ['SELECT * FROM devices WHERE deviceId = "leaf-2"', ['leaf-2']],
  ["SELECT * FROM devices WHERE DeviceId = 'leaf-1'", ['leaf-1']],
  ["SELECT * FROM devices WHERE status = 'disabled'", ['leaf-2']],
  ["SELECT * FROM devices WHERE status != 'disabled'", ['edge-top', 'edge-mid', 'leaf-1', 'lonely']],
  ["SELECT * FROM devices WHERE status <> 'disabled'", ['edge-top', 'edge-mid', 'leaf-1', 'lonely']],
  ['SELECT * FROM devices WHERE capabilities.iotEdge = true', ['edge-top', 'edge-mid']],
  ['SELECT * FROM devices WHERE capabilities.iotEdge = false', ['leaf-1', 'leaf-2', 'lonely']],
  ['SELECT * FROM devices WHERE capabilities.iotEdge', ['edge-top', 'edge-mid']],
  ['SELECT * FROM devices WHERE NOT capabilities.iotEdge', ['leaf-1', 'leaf-2', 'lonely']],
  [`SELECT * FROM devices WHERE deviceScope = '${scope('edge-mid')}'`, ['edge-mid', 'leaf-1']],
  [`SELECT * FROM devices WHERE deviceScope = '${scope('edge-mid')}' AND capabilities.iotEdge = true`, ['edge-mid']],
  [`SELECT * FROM devices WHERE ARRAY_CONTAINS(parentScopes, '${scope('edge-top')}')`, ['edge-mid']],
  [`SELECT * FROM devices WHERE array_contains(parentScopes, '${scope('edge-mid')}')`, ['leaf-1']],
  [`SELECT * FROM devices WHERE parentScopes[0] = '${scope('edge-mid')}'`, ['leaf-1']],
  ['SELECT * FROM devices WHERE parentScopes = []', ['edge-top', 'leaf-2', 'lonely']],
  [`SELECT * FROM devices WHERE parentScopes = ['${scope('edge-top')}']`, ['edge-mid']],
  ["SELECT * FROM devices WHERE tags.sensors = ['temp', 'hum']", ['leaf-1']],
  ["SELECT * FROM devices WHERE tags.location.region = 'EU'", ['edge-top', 'edge-mid']],
  ["SELECT * FROM devices WHERE tags.location.region = 'EU' AND tags.location.plant = 'Oslo'", ['edge-top']],
  [
    "SELECT * FROM devices WHERE tags.location.plant = 'Oslo' OR tags.location.region = 'US'",
    ['edge-top', 'leaf-1', 'leaf-2'],
  ],
  ["SELECT * FROM devices WHERE tags.location.region IN ['US', 'APAC']", ['leaf-1', 'leaf-2']],
  ["SELECT * FROM devices WHERE tags.location.region NIN ['US']", ['edge-top', 'edge-mid']],
  ["SELECT * FROM devices WHERE tags.location.region NOT IN ('US')", ['edge-top', 'edge-mid']],
  ['SELECT * FROM devices WHERE tags.tier >= 2', ['edge-mid']],
  ['SELECT * FROM devices WHERE tags.tier < 2', ['edge-top']],
  ['SELECT * FROM devices WHERE tags.tier > 0.5 AND tags.tier <= 1', ['edge-top']],
  ['SELECT * FROM devices WHERE tags.tier > -1e3', ['edge-top', 'edge-mid']],
  ["SELECT * FROM devices WHERE tags['odd key'] = 'x'", ['leaf-1']],
  ["SELECT * FROM devices WHERE tags.owner = 'O''Brien'", ['leaf-2']],
  ["SELECT * FROM devices WHERE tags.owner = 'O\\'Brien'", ['leaf-2']],
  [
    'SELECT * FROM devices WHERE properties.desired.telemetry.interval < properties.reported.telemetry.interval',
    ['leaf-1'],
  ],
  ['SELECT * FROM devices WHERE properties.desired.telemetry.interval = 5', ['leaf-2']],
  ["SELECT * FROM devices WHERE properties.reported.telemetry.status = 'ok'", ['leaf-1']],
  ['SELECT * FROM devices WHERE properties.reported.$version > 5', ['leaf-1']],
  // string order is by code unit, as IoT Hub compares strings
  ["SELECT * FROM devices WHERE properties.reported.firmware < '1.2.0'", ['leaf-2']],
  ['SELECT * FROM devices WHERE properties.reported.battery = null', ['leaf-1']],
  ['SELECT * FROM devices WHERE IS_NULL(properties.reported.battery)', ['leaf-1']],
  ['SELECT * FROM devices WHERE IS_DEFINED(properties.reported.firmware)', ['leaf-1', 'leaf-2']],
  ['SELECT * FROM devices WHERE NOT IS_DEFINED(tags.location)', ['lonely']],
  // a missing property makes the comparison unknown, and NOT of unknown is still unknown
  ["SELECT * FROM devices WHERE tags.location.plant != 'Oslo'", ['edge-mid']],
  ["SELECT * FROM devices WHERE NOT (tags.location.plant = 'Oslo')", ['edge-mid']],
  [
    "SELECT * FROM devices WHERE tags.location.plant != 'Oslo' OR NOT IS_DEFINED(tags.location.plant)",
    ['edge-mid', 'leaf-1', 'leaf-2', 'lonely'],
  ],
  // comparing different JSON types is unknown, not false
  ["SELECT * FROM devices WHERE tags.tier = '1'", []],
  ["SELECT * FROM devices WHERE NOT (tags.tier = '1')", []],
  [
    "SELECT * FROM devices WHERE (status = 'enabled' AND capabilities.iotEdge = false) OR deviceId = 'edge-top'",
    ['edge-top', 'leaf-1', 'lonely'],
  ],
  [
    "SELECT * FROM devices WHERE status = 'enabled' AND (capabilities.iotEdge = false OR deviceId = 'edge-top')",
    ['edge-top', 'leaf-1', 'lonely'],
  ],
  [
    "SELECT * FROM devices WHERE status = 'enabled' AND capabilities.iotEdge = false OR deviceId = 'edge-top'",
    ['edge-top', 'leaf-1', 'lonely'],
  ],
  ["SELECT * FROM devices WHERE deviceId = 'leaf-2' OR deviceId = 'lonely' AND status = 'disabled'", ['leaf-2']],
  ["SELECT * FROM devices WHERE NOT NOT deviceId = 'lonely'", ['lonely']],
  ["SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'edge-')", ['edge-top', 'edge-mid']],
  ["SELECT * FROM devices WHERE ENDS_WITH(deviceId, '-2')", ['leaf-2']],
  ["SELECT * FROM devices WHERE ARRAY_CONTAINS(tags.sensors, 'hum')", ['leaf-1']],
  ['SELECT TOP 2 * FROM devices', ['edge-top', 'edge-mid']],
  ['SELECT TOP 0 * FROM devices', []],
  [
    'SELECT * FROM devices.modules',
    ['edge-top/$edgeAgent', 'edge-top/$edgeHub', 'edge-mid/$edgeAgent', 'leaf-1/filter'],
  ],
  ["SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent'", ['edge-top/$edgeAgent', 'edge-mid/$edgeAgent']],
  [
    "SELECT * FROM devices.modules WHERE deviceId = 'edge-top' AND moduleId IN ['$edgeHub', 'other']",
    ['edge-top/$edgeHub'],
  ],
  ["SELECT * FROM devices.modules WHERE properties.reported.runtime = 'docker'", ['edge-top/$edgeAgent']],
  ["SELECT * FROM devices.modules WHERE tags.role = 'filter'", ['leaf-1/filter']],
];

for (const [sql, expected] of selects) {
  test(`query: ${sql}`, () => {
    assert.deepEqual(ids(runQuery(sql, source)), expected);
  });
}

test('SELECT * returns the whole twin', () => {
  const [row] = runQuery("SELECT * FROM devices WHERE deviceId = 'leaf-1'", source);
  assert.equal(row, devices[2]);
});

// [query, expected rows]
const projections: Array<[string, object[]]> = [
  ['SELECT COUNT() AS numberOfDevices FROM devices', [{ numberOfDevices: 5 }]],
  ['SELECT COUNT() AS numberOfDevices FROM devices WHERE capabilities.iotEdge = true', [{ numberOfDevices: 2 }]],
  ["SELECT COUNT() AS n FROM devices WHERE deviceId = 'nobody'", [{ n: 0 }]],
  ['select count() from devices.modules', [{ $1: 4 }]],
  [
    "SELECT deviceId, tags.location FROM devices WHERE tags.location.region = 'EU'",
    [
      { deviceId: 'edge-top', location: { region: 'EU', plant: 'Oslo' } },
      { deviceId: 'edge-mid', location: { region: 'EU', plant: 'Bergen' } },
    ],
  ],
  [
    "SELECT deviceId AS id, tags.location.plant AS plant FROM devices WHERE STARTS_WITH(deviceId, 'leaf')",
    [{ id: 'leaf-1' }, { id: 'leaf-2' }],
  ],
  [
    'SELECT deviceId, moduleId FROM devices.modules WHERE deviceId = "edge-mid"',
    [{ deviceId: 'edge-mid', moduleId: '$edgeAgent' }],
  ],
  [
    'SELECT tags.location.region AS region, COUNT() AS numberOfDevices FROM devices WHERE IS_DEFINED(tags.location) GROUP BY tags.location.region',
    [
      { region: 'EU', numberOfDevices: 2 },
      { region: 'US', numberOfDevices: 2 },
    ],
  ],
  [
    'SELECT status, COUNT() AS n FROM devices GROUP BY status',
    [
      { status: 'enabled', n: 4 },
      { status: 'disabled', n: 1 },
    ],
  ],
];

for (const [sql, expected] of projections) {
  test(`projection: ${sql}`, () => {
    assert.deepEqual(runQuery(sql, source), expected);
  });
}

// [query, message pattern, position]
const errors: Array<[string, RegExp, number]> = [
  ['', /empty/, 1],
  ['SELEC * FROM devices', /position 1: expected SELECT but found 'SELEC'/, 1],
  ['SELECT FROM devices', /position 8: expected '\*', a property path or COUNT\(\) but found 'FROM'/, 8],
  ['SELECT * devices', /position 10: expected ',' or FROM but found 'devices'/, 10],
  ['SELECT * FROM twins', /position 15: expected devices or devices.modules but found 'twins'/, 15],
  ['SELECT * FROM devices.jobs', /position 23: expected 'modules' after 'devices.'/, 23],
  [
    'SELECT * FROM devices WHERE',
    /position 28: expected a property path, a value or a function but found end of query/,
    28,
  ],
  [
    'SELECT * FROM devices WHERE deviceId = ',
    /position 40: expected a property path, a value or a function but found end of query/,
    40,
  ],
  [
    "SELECT * FROM devices WHERE deviceId == 'a'",
    /position 39: expected a property path, a value or a function but found '='/,
    39,
  ],
  ["SELECT * FROM devices WHERE deviceId = 'a", /position 40: string is not closed/, 40],
  ["SELECT * FROM devices WHERE (deviceId = 'a'", /position 44: expected '\)' or AND\/OR but found end of query/, 44],
  [
    "SELECT * FROM devices WHERE deviceId = 'a')",
    /position 43: expected AND, OR, GROUP BY or end of query but found '\)'/,
    43,
  ],
  ["SELECT * FROM devices WHERE deviceId = 'a' AND", /position 47: expected a property path/, 47],
  [
    "SELECT * FROM devices WHERE deviceId IN 'a'",
    /position 41: expected '\[' to start the list but found string 'a'/,
    41,
  ],
  ["SELECT * FROM devices WHERE deviceId IN ['a' 'b']", /position 46: expected ',' or '\]' but found string 'b'/, 46],
  [
    'SELECT * FROM devices WHERE deviceId IN [status]',
    /position 42: expected a literal value in the list but found 'status'/,
    42,
  ],
  ["SELECT * FROM devices WHERE deviceId ~ 'a'", /position 38: unexpected character "~"/, 38],
  ['SELECT * FROM devices WHERE IS_DEFINED()', /position 29: IS_DEFINED\(\) takes 1 argument, got 0/, 29],
  ["SELECT * FROM devices WHERE IS_DEFINED('x')", /position 29: IS_DEFINED\(\) expects a property path/, 29],
  ['SELECT * FROM devices WHERE FOO(deviceId)', /position 29: unknown function FOO\(\)/, 29],
  ['SELECT * FROM devices WHERE tags. = 1', /position 35: expected a property name after '.' but found '='/, 35],
  ['SELECT * FROM devices WHERE tags.tier > 12abc', /position 41: malformed number/, 41],
  [
    "SELECT * FROM devices WHERE deviceId = 'a' ORDER BY deviceId",
    /position 44: expected AND, OR, GROUP BY or end of query but found 'ORDER'/,
    44,
  ],
  ['SELECT TOP x * FROM devices', /position 12: expected a whole number after TOP/, 12],
  ['SELECT COUNT(deviceId) FROM devices', /position 14: expected '\)' \(COUNT takes no arguments\)/, 14],
  [
    'SELECT deviceId, COUNT() FROM devices',
    /position 8: property deviceId cannot be selected with COUNT\(\) without GROUP BY/,
    8,
  ],
  [
    'SELECT deviceId, COUNT() AS n FROM devices GROUP BY status',
    /position 8: property deviceId must appear in GROUP BY/,
    8,
  ],
  ['SELECT * FROM devices GROUP BY status', /position 32: GROUP BY cannot be used with SELECT \*/, 32],
  ["SELECT * FROM devices WHERE tags.x = 'bad \\q escape'", /position 43: unknown escape/, 43],
];

for (const [sql, pattern, position] of errors) {
  test(`syntax error: ${JSON.stringify(sql)}`, () => {
    assert.throws(
      () => runQuery(sql, source),
      (err: unknown) => {
        assert.ok(err instanceof QueryError, `expected QueryError, got ${String(err)}`);
        assert.match(err.message, pattern);
        assert.equal(err.position, position);
        return true;
      },
    );
  });
}

test('a query error is an Error with the name QueryError', () => {
  try {
    runQuery('SELECT', source);
    assert.fail('should have thrown');
  } catch (err) {
    assert.ok(err instanceof Error);
    assert.equal((err as Error).name, 'QueryError');
  }
});

test('the source is read lazily: only the collection named in FROM is touched, TOP stops early', () => {
  let pulled = 0;
  const counting = {
    *devices() {
      for (const d of devices) {
        pulled++;
        yield d;
      }
    },
    modules(): Iterable<TwinJson> {
      throw new Error('modules must not be read');
    },
  };
  assert.deepEqual(ids(runQuery('SELECT TOP 1 * FROM devices', counting)), ['edge-top']);
  assert.equal(pulled, 1);
});

test('deep nesting is a QueryError, not a stack overflow; nesting within the limit still runs', () => {
  const n = 20_000;
  const deep = [
    `SELECT * FROM devices WHERE ${'('.repeat(n)}deviceId = 'a'${')'.repeat(n)}`,
    `SELECT * FROM devices WHERE ${'NOT '.repeat(n)}deviceId = 'a'`,
    `SELECT * FROM devices WHERE deviceId IN ${'['.repeat(n)}${']'.repeat(n)}`,
    `SELECT * FROM devices WHERE tags.x = ${'['.repeat(n)}${']'.repeat(n)}`,
    `SELECT * FROM devices WHERE ${'LOWER('.repeat(n)}deviceId${')'.repeat(n)} = 'a'`,
    `SELECT * FROM devices WHERE ${Array(n).fill("deviceId = 'a'").join(' AND ')}`,
    `SELECT * FROM devices WHERE ${Array(n).fill("deviceId = 'a'").join(' OR ')}`,
  ];
  for (const sql of deep) {
    assert.throws(
      () => runQuery(sql, source),
      (err: unknown) => err instanceof QueryError && /nests more than 200 levels/.test(err.message),
      sql.slice(0, 60),
    );
  }
  const fine = `SELECT * FROM devices WHERE ${'('.repeat(50)}deviceId = 'leaf-1'${')'.repeat(50)} AND ${Array(50).fill("status = 'enabled'").join(' AND ')}`;
  assert.deepEqual(ids(runQuery(fine, source)), ['leaf-1']);
});
