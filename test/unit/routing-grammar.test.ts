import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { compileCondition, type Tri } from '../../src/routing/evaluate.ts';
import { parseRoute } from '../../src/routing/parser.ts';
import { tokenize } from '../../src/routing/lexer.ts';
import { RouteSyntaxError } from '../../src/routing/errors.ts';
import { RouteTable } from '../../src/routing/route-table.ts';
import { UserError } from '../../src/util/errors.ts';
import type { RoutableMessage } from '../../src/routing/message.ts';

// ---- messages with known properties and bodies ----

const weatherBody = {
  message: {
    Weather: {
      Temperature: 50,
      Freezing: -50.4,
      Precise: 50.4,
      NullValue: null,
      Prev: [20, 30, 40],
      IsEnabled: true,
      IsDisabled: false,
      Location: { Street: 'One Microsoft Way', City: 'Redmond', State: 'WA' },
      History: [
        { Month: 'Feb', Temperature: 40 },
        { Month: 'Jan', Temperature: 30 },
      ],
    },
  },
  reading: '35',
  conflict: 50,
};

function utf32le(text: string): Buffer {
  const cps = Array.from(text, (c) => c.codePointAt(0)!);
  const b = Buffer.alloc(cps.length * 4);
  cps.forEach((cp, i) => b.writeUInt32LE(cp, i * 4));
  return b;
}

/** A downstream device's telemetry: JSON body, no connectionModuleId. */
const device: RoutableMessage = {
  source: '/messages',
  body: Buffer.from(JSON.stringify(weatherBody), 'utf8'),
  systemProperties: {
    messageId: 'm-1',
    correlationId: 'c-1',
    userId: 'u-1',
    to: '/devices/sensor-1/messages/events',
    contentType: 'application/json',
    contentEncoding: 'UTF-8',
    connectionDeviceId: 'sensor-1',
    connectionAuthMethod: '{"scope":"device","type":"sas"}',
    connectionDeviceGenerationId: '638000000000000001',
    enqueuedTime: '2024-05-01T10:00:00.000Z',
    creationTime: '2024-05-01T09:59:59.000Z',
    messageSchema: 'weather-v1',
    'dt-subject': 'thermostat1',
    connectionModuleId: undefined,
  },
  appProperties: {
    key1: 'value1',
    key2: '3',
    key3: 'VALUE3',
    temp: '35',
    $messageId: 'app-mid',
    '$body.conflict': '100',
    TRUE: 'yes',
    'a+1': 'plus',
    path: '/* x */',
    greeting: 'Tschüss',
  },
};

/** A module's output: not JSON, has connectionModuleId and outputName. */
const moduleOut: RoutableMessage = {
  source: '/messages/modules/filter/outputs/out1',
  body: Buffer.from('hello', 'utf8'),
  systemProperties: {
    messageId: 'm-2',
    contentType: 'text/plain',
    contentEncoding: 'utf-8',
    connectionDeviceId: 'edge-1',
    connectionModuleId: 'filter',
    outputName: 'out1',
  },
  appProperties: { alert: 'high' },
};

const withBody = (body: Buffer, sys: Record<string, string | undefined>): RoutableMessage => ({
  source: '/messages',
  body,
  systemProperties: { connectionDeviceId: 'sensor-2', ...sys },
  appProperties: {},
});

const json = JSON.stringify(weatherBody);
const utf16 = withBody(Buffer.from(json, 'utf16le'), { contentType: 'Application/JSON', contentEncoding: 'utf-16' });
const utf32 = withBody(utf32le(json), { contentType: 'application/json', contentEncoding: 'UTF-32' });
const noEncoding = withBody(Buffer.from(json), { contentType: 'application/json' });
const charsetType = withBody(Buffer.from(json), {
  contentType: 'application/json; charset=utf-8',
  contentEncoding: 'utf-8',
});
const badJson = withBody(Buffer.from('{"message": '), { contentType: 'application/json', contentEncoding: 'utf-8' });
const arrayJson = withBody(Buffer.from('[1,2,3]'), { contentType: 'application/json', contentEncoding: 'utf-8' });

const twin: RoutableMessage = {
  source: '/twinChangeNotifications',
  body: Buffer.from(
    JSON.stringify({
      version: 7,
      properties: { reported: { telemetryConfig: { sendFrequency: '5m' }, nothing: null } },
    }),
  ),
  systemProperties: { contentType: 'application/json', contentEncoding: 'utf-8', connectionDeviceId: 'sensor-1' },
  appProperties: {},
};
const twinNotJson = { ...twin, body: Buffer.from('random text') };

const messages = { device, moduleOut, utf16, utf32, noEncoding, charsetType, badJson, arrayJson, twin, twinNotJson };
type MessageName = keyof typeof messages;

const T = true;
const F = false;
const U = undefined;

type Row = [condition: string, expected: Tri, on?: MessageName];

const TWIN_SOURCE = '/twinChangeNotifications';

/** Every row is evaluated against the named message (device when not named). */
const table: Record<string, Row[]> = {
  literals: [
    ['true', T],
    ['false', F],
    ['null', F],
    ['undefined', U],
    ['3', U],
    ["'a string'", U],
    ['"a string"', U],
    [`'it\\'s' = "it's"`, T],
    [`"say \\"hi\\"" = 'say "hi"'`, T],
    [`'back\\\\slash' = "back\\\\slash"`, T],
    [`'\\u0041\\u00fc' = 'Aü'`, T],
    [`length('\\\\u0041') = 6`, T], // an escaped backslash followed by u0041 is not an escape
    ['0x10 = 16', T],
    ['0XfF = 255', T],
    ['0xDeadBeef = 3735928559', T],
    ['0xFFFFFFFFFFFFFFFF = -1', T],
    ['1.5e1 = 15', T],
    ['1.5E+1 = 15', T],
    ['150e-2 = 1.5', T],
    ['.5 = 0.5', T],
    ['-.5 = -0.5', T],
    ['0100 = 100', T],
    ['10e1000 = 1 / 0', T],
    ['is_defined(e5)', F], // `e5` lexes as a malformed number: the undefined literal
    ["TRUE = 'yes'", T], // literals are lower-case only: TRUE is an application property
  ],
  'names: bare, $name and {$name}': [
    ["key1 = 'value1'", T],
    ["KEY1 = 'value1'", T],
    ["key1 = 'VALUE1'", F],
    ["missing = 'x'", U],
    ['is_defined(missing)', F],
    ["$messageId = 'app-mid'", T], // an application property named $messageId wins over the system property
    ["{$messageId} = 'm-1'", T],
    ["{ $messageId } = 'm-1'", T],
    ["$correlationId = 'c-1'", T],
    ["$userId = 'u-1'", T],
    ["$to = '/devices/sensor-1/messages/events'", T],
    ["$contentType = 'application/json'", T],
    ["$contentEncoding = 'UTF-8'", T],
    ["$CONNECTIONDEVICEID = 'sensor-1'", T],
    ["starts_with($connectionAuthMethod, '{')", T],
    ["$connectionDeviceGenerationId = '638000000000000001'", T],
    ["$enqueuedTime > '2024-01-01'", T],
    ['$creationTime < $enqueuedTime', T],
    ["$messageSchema = 'weather-v1'", T],
    ["$dt-subject = 'thermostat1'", T],
    ["$connectionModuleId = 'filter'", T, 'moduleOut'],
    ["$outputName = 'out1'", T, 'moduleOut'],
    ['is_defined($outputName)', F],
    ["connectionDeviceId = 'sensor-1'", U], // a bare name reads application properties only
    ["$key1 = 'value1'", U], // no application property "$key1" and no system property "key1"
    ['is_defined({$key1})', F],
    ['is_defined($foo[0])', F],
    ["a+1 = 'plus'", T], // "+" is a name character: write "a + 1" for arithmetic
  ],
  comments: [
    ["/* leading */ key1 = 'value1'", T],
    ["key1 /* between */ = /* operands */ 'value1'", T],
    ["key1 = 'value1' /* trailing */", T],
    ["path = '/* x */'", T],
    ["/* key1 = 'nope' */ key2 = '3'", T],
  ],
  'arithmetic (all numbers are doubles)': [
    ['3 + 4 = 7', T],
    ['3 - 4 = -1', T],
    ['3 * 4 = 12', T],
    ['3 / 4 = 0.75', T],
    ['7 % 4 = 3', T],
    ['-7 % 4 = -3', T],
    ['0.1 + 0.2 = 0.3', F],
    ['abs(0.1 + 0.2 - 0.3) < 1e-9', T],
    ['3 / 0 = 1 / 0', T],
    ['-3 / 0 < 0', T],
    ['is_defined(3 % 0)', F],
    ['is_defined(0 / 0)', F],
    ['3 % 0 = 3 % 0', U],
    ['3 + as_number(missing) = 3', U],
    ['is_defined(3 * as_number(key1))', F],
    ['as_number(key2) * 2 = 6', T],
  ],
  'precedence and associativity': [
    ['3 + 4 * 5 = 23', T],
    ['(3 + 4) * 5 = 35', T],
    ['10 - 4 - 3 = 3', T],
    ['12 / 2 / 3 = 2', T],
    ['2 * 3 % 4 = 2', T],
    ['2 + 3 % 2 = 3', T],
    ['-(3 + 4) = -7', T],
    ['- 3 * 2 = -6', T],
    ['1 - -2 = 3', T],
    ['- -3 = 3', T],
    ['1 + 1 < 3', T],
    ['1 < 2 = true', T],
    ['2 > 1 <> false', T],
    ["'a' || 'b' = 'ab'", T],
    ['true OR true AND false', T],
    ['(true OR true) AND false', F],
    ['false AND false OR true', T],
    ['NOT false AND false', F],
    ['NOT (false AND false)', T],
    ['1 = 1 AND 2 = 2', T],
    ["(missing ?? 'd') = 'd'", T],
    ["(missing ?? missing2 ?? 'z') = 'z'", T],
    ['(undefined AND true) ?? true', T],
    ['false ?? true', F],
    ['(((3))) = 3', T],
  ],
  comparisons: [
    ['4 < 7', T],
    ['7 < 7', F],
    ['7 <= 7', T],
    ['8 > 7', T],
    ['7 >= 8', F],
    ['3 = 3', T],
    ['3 != 3', F],
    ['3 <> 4', T],
    ["'a' < 'b'", T],
    ["'B' < 'a'", T], // ordinal: upper case sorts before lower case
    ["'abc' >= 'abd'", F],
    ["'10' < '9'", T], // strings compare as strings
    ["temp > '30'", T], // temp is the string '35'
    ["temp > '4'", F],
    ['as_number(temp) > 30', T],
    ['as_number(temp) > 40', F],
    ["key2 = '3'", T],
    ['true = true', T],
    ['true <> false', T],
    ['false < true', T],
    ['null = null', T],
    ['null <> null', F],
    ['null <= null', T],
    ['null < null', F],
    ['undefined = undefined', U],
    ['undefined < undefined', U],
    ["missing < 'z'", U],
    ["missing <> 'z'", U],
  ],
  'three-valued logic': [
    ['true AND true', T],
    ['true and false', F],
    ['true OR false', T],
    ['false or false', F],
    ['NOT true', F],
    ['not false', T],
    ['Not (true And false)', T],
    ['false AND undefined', F],
    ['undefined AND false', F],
    ['true AND undefined', U],
    ['undefined and undefined', U],
    ['true OR undefined', T],
    ['undefined OR true', T],
    ['false OR undefined', U],
    ['undefined or false', U],
    ["NOT (missing = 'x')", U],
    ["missing = 'x' AND false", F],
    ["missing = 'x' OR true", T],
    ["missing = 'x' OR false", U],
    ['null AND true', F],
    ['(null AND true) = null', T],
    ['null OR true', T],
    ['null OR false', F],
    ['(null OR null) = null', T],
    ['not null', T],
  ],
  coalesce: [
    ['undefined ?? undefined', U],
    ["(key1 ?? 'd') = 'value1'", T],
    ['(as_number(key1) ?? 12.5) = 12.5', T],
    ['(as_number(key2) ?? 12.5) = 3', T],
    ['(3 % 0 ?? 1) = 1', T],
    ['(null ?? null) = null', T],
    ["($body.message.Nope ?? 'd') = null", T], // a missing body path is null, not undefined
  ],
  'string concatenation (|| and concat; strings only)': [
    ["'a' || 'b' || 'c' = 'abc'", T],
    ["'x' || key1 = 'xvalue1'", T],
    ["is_defined('a' || missing)", F],
    ["'1' || '2' = '12'", T],
    ["concat('a', key1, 'c') = 'avalue1c'", T],
    ["CONCAT('a', 'b') = 'ab'", T],
    ["is_defined(concat('a', missing))", F],
    ["$body.message.Weather.Location.City || ', WA' = 'Redmond, WA'", T],
    ["is_defined($body.message.Weather.Temperature || 'x')", F], // no number-to-string conversion
  ],
  'math functions': [
    ['abs(-12) = 12', T],
    ['ABS(as_number(key2)) = 3', T],
    ['is_defined(abs(as_number(key1)))', F],
    ['exp(0) = 1', T],
    ['abs(exp(1) - 2.718281828) < 1e-9', T],
    ['exp(4000) = 1 / 0', T],
    ['power(2, 10) = 1024', T],
    ['POWER(as_number(key2), 2) = 9', T],
    ['power(1, 1 / 0) = 1', T],
    ['is_defined(power(-8, 1 / 3))', F],
    ['square(3) = 9', T],
    ['square(-1.5) = 2.25', T],
    ['ceiling(2.1) = 3', T],
    ['ceiling(-2.1) = -2', T],
    ['floor(2.9) = 2', T],
    ['floor(-2.1) = -3', T],
    ['sign(-2.5) = -1', T],
    ['sign(0) = 0', T],
    ['sign(3 / 0) = 1', T],
    ['sqrt(16) = 4', T],
    ['is_defined(sqrt(-4))', F],
    ['SQRT(-4) = -2', U],
    ['abs($body.message.Weather.Freezing) = 50.4', T],
    ['ceiling($body.message.Weather.Precise) = 51', T],
  ],
  'type functions': [
    ["as_number('3') = 3", T],
    ["as_number(' 1,234.5 ') = 1234.5", T],
    ["as_number('(5)') = -5", T],
    ["as_number('5-') = -5", T],
    ["as_number('1e3') = 1000", T],
    ["as_number('10e1000') = 1 / 0", T],
    ["is_defined(as_number('0x10'))", F],
    ["is_defined(as_number('apple'))", F],
    ['as_number(7) = 7', T],
    ['as_number($body.message.Weather.Temperature) = 50', T],
    ['as_number($body.reading) = 35', T],
    ['is_bool(true)', T],
    ['is_bool(1)', F],
    ["is_bool('true')", F],
    ['is_bool(missing)', F],
    ['is_bool(undefined)', F],
    ['is_bool($body.message.Weather.IsEnabled)', T],
    ['is_bool($body.message.Weather.Temperature)', F],
    ['is_defined(key1)', T],
    ['is_defined(undefined)', F],
    ['is_defined(null)', T],
    ['is_defined(true AND undefined)', F],
    ['is_defined(1 / 0)', T],
    ['is_defined($body.message.Weather.Temperature)', T],
    ['is_defined($body.message.Weather)', F], // objects are not values
    ['is_null(null)', T],
    ['is_null(key1)', F],
    ['is_null(missing)', F],
    ['is_null(0)', F],
    ['is_null($body.message.Weather.NullValue)', T],
    ['is_null($body.message.Weather.Temperature)', F],
    ['is_number(1.5)', T],
    ["is_number('1.5')", F],
    ['is_number(1 / 0)', F],
    ['is_number(0 % 0)', F],
    ['is_number($body.message.Weather.Temperature)', T],
    ['is_number($body.message.Weather.Location.City)', F],
    ["is_string('x')", T],
    ['is_string(key1)', T],
    ['is_string(missing)', F],
    ['is_string(3)', F],
    ['is_string($body.message.Weather.Location.City)', T],
  ],
  'string functions': [
    ["length('hello') = 5", T],
    ["length('') = 0", T],
    ['length(key3) = 6', T],
    ['length(greeting) = 7', T],
    ['is_defined(length(missing))', F],
    ["lower('HeLLo') = 'hello'", T],
    ["lower(key3) = 'value3'", T],
    ["LOWER('ÄÖÜ') = 'äöü'", T],
    ['is_defined(lower(missing))', F],
    ["upper(key1) = 'VALUE1'", T],
    ["upper('straße') = 'STRAßE'", T], // one character in, one out (invariant culture)
    ["substring('abc', 1) = 'bc'", T],
    ["substring('abc', 3) = ''", T],
    ["substring('abc', 4) = ''", U],
    ["substring('abc', -1) = ''", U],
    ["substring('hello', 1.9) = 'ello'", T],
    ["substring('hello', 1, 3) = 'ell'", T],
    ["substring('hello', 4, 1) = 'o'", T],
    ["substring('hello', 4, 2) = 'o'", U],
    ["substring('hello', 0, 0) = ''", T],
    ["SUBSTRING(key1, 0, 5) = 'value'", T],
    ["index_of('abcdef', 'cd') = 2", T],
    ["index_of('abc', 'x') = -1", T],
    ["index_of(key1, 'LUE') = -1", T],
    ["is_defined(index_of(missing, 'a'))", F],
    ["starts_with(key1, 'val')", T],
    ["starts_with(key1, 'Val')", F],
    ["starts_with(missing, 'a')", U],
    ["ends_with(key1, 'ue1')", T],
    ["ENDS_WITH('abc', 'x')", F],
    ["contains(key1, 'lue')", T],
    ["contains('abc', 'd')", F],
    ["Contains($body.message.Weather.Location.Street, 'Microsoft')", T],
  ],
  '$body queries (JSON content type only)': [
    ['$body.message.Weather.Temperature = 50', T],
    ['$BODY.message.Weather.Temperature >= 50', T],
    ['50 >= $body.message.Weather.Temperature', T],
    ["$body.message.Weather.Temperature = '50'", F], // no implicit conversion between kinds
    ["$body.message.Weather.Temperature <> '50'", T],
    ['$body.reading > 30', T], // a string is ordered after every number
    ['$body.reading = 35', F],
    ['$body.message.Weather.Prev[1] = 30', T],
    ['$body.message.Weather.Prev[0] + $body.message.Weather.Prev[1] = 50', T],
    ['$body.message.Weather.Temperature - 10 = $body.message.Weather.History[0].Temperature', T],
    ['- $body.message.Weather.Freezing = 50.4', T],
    ["$body.message.Weather.History[1].Month = 'Jan'", T],
    ['$body.message.Weather.Prev[5] = null', T],
    ["$body.message.Weather.Location.City = 'Redmond'", T],
    ['$body.message.Weather.IsEnabled', T],
    ['NOT $body.message.Weather.IsDisabled', T],
    ['$body.message.Weather.IsEnabled AND $body.message.Weather.IsDisabled', F],
    ['$body.message.Weather.IsEnabled OR $body.message.Weather.IsDisabled', T],
    ['$body.message.Weather.Temperature AND true', U],
    ['true AND $body.message.Weather.IsEnabled', T],
    ['$body.message.Weather.Temperature % 7 = 1', T],
    ['$body.message.Weather', U],
    ['$body.message.Weather = null', U],
    ['$body.message.Weather.Prev = null', U],
    ['$body.message.Weather.NullValue = null', T],
    ['$body.message.Nope = null', T],
    ['is_defined($body.message.Nope)', T],
    ['$body.message.Weather.Temperature != null', T],
    ['$body.message.weather.Temperature = 50', F], // paths are case-sensitive
    ["$body.conflict = '100'", T], // an application property named "$body.conflict" wins
    ['{$body.conflict} = 50', T], // escaped: always the body
    ['$body', U],
    ['$body.message.Weather.Temperature = 50', U, 'moduleOut'],
    ['is_defined($body.anything)', F, 'moduleOut'],
    ['$body.message.Weather.Temperature = 50', T, 'utf16'],
    ['$body.message.Weather.Temperature = 50', T, 'utf32'],
    ['$body.message.Weather.Temperature = 50', U, 'noEncoding'],
    ['$body.message.Weather.Temperature = 50', U, 'charsetType'],
    ['is_defined($body.message)', F, 'badJson'],
    ['is_defined($body.message)', F, 'arrayJson'],
  ],
  'twin_change_includes (FROM /twinChangeNotifications)': [
    ['twin_change_includes(properties.reported.telemetryConfig)', T, 'twin'],
    ['twin_change_includes(properties.reported.telemetryConfig.sendFrequency)', T, 'twin'],
    ['TWIN_CHANGE_INCLUDES(properties.reported.nothing)', T, 'twin'],
    ['twin_change_includes(properties.desired.telemetryConfig)', F, 'twin'],
    ['NOT twin_change_includes(properties.reported.other)', T, 'twin'],
    ['twin_change_includes(properties.reported.telemetryConfig)', U, 'twinNotJson'],
  ],
  'the seeds’ condition': [
    ['NOT IS_DEFINED($connectionModuleId)', T, 'device'],
    ['NOT IS_DEFINED($connectionModuleId)', F, 'moduleOut'],
    ['NOT IS_DEFINED ($connectionModuleId)', T, 'device'],
  ],
};

describe('route conditions, table-driven', () => {
  let count = 0;
  for (const [section, rows] of Object.entries(table)) {
    describe(section, () => {
      for (const [condition, expected, on = 'device'] of rows) {
        count++;
        it(`${on}: ${condition} -> ${expected}`, () => {
          const source = messages[on].source === TWIN_SOURCE ? TWIN_SOURCE : '/messages/*';
          const compiled = compileCondition(condition, { source });
          assert.equal(compiled.evaluate(messages[on]), expected);
        });
      }
    });
  }
  it('has at least 150 conditions', () => assert.ok(count >= 150, `only ${count}`));
});

describe('the seeds’ routes', () => {
  const all = 'FROM /messages/* INTO $upstream';
  const downstream = 'FROM /messages/* WHERE NOT IS_DEFINED ($connectionModuleId) INTO $upstream';

  it('FROM /messages/* INTO $upstream takes device and module messages', () => {
    const table = RouteTable.fromDefinitions([{ name: 'allMessagesToHub', route: all }]);
    assert.deepEqual(
      table.match(device).map((d) => d.endpoint.id),
      ['$upstream'],
    );
    assert.deepEqual(
      table.match(moduleOut).map((d) => d.endpoint.id),
      ['$upstream'],
    );
    assert.deepEqual(table.match(twin), []);
  });

  it('WHERE NOT IS_DEFINED($connectionModuleId) takes only downstream device messages', () => {
    const table = RouteTable.fromDefinitions([{ name: 'allDownstreamToHub', route: downstream }]);
    assert.equal(table.match(device).length, 1);
    assert.equal(table.match(moduleOut).length, 0);
  });

  it('parses into source, condition text and sink', () => {
    const r = parseRoute(downstream);
    assert.equal(r.source, '/messages/*');
    assert.equal(r.sourcePrefix, '/messages/');
    assert.equal(r.condition.text, 'NOT IS_DEFINED ($connectionModuleId)');
    assert.equal(r.endpoint.id, '$upstream');
    assert.equal(parseRoute(all).condition.text, undefined);
  });

  it('keywords are case-insensitive and SELECT * is optional', () => {
    for (const text of [
      'select * from /messages/* where not is_defined($connectionModuleId) into $UPSTREAM',
      'SELECT * FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream',
      'From /messages/* Where Not Is_Defined($connectionModuleId) Into $Upstream',
      '/* all downstream */ FROM /messages/* /* filter */ WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream /* done */',
    ]) {
      const r = parseRoute(text);
      assert.equal(r.condition.evaluate(device), true, text);
      assert.equal(r.condition.evaluate(moduleOut), false, text);
    }
  });
});

describe('lexing like the original', () => {
  it('reads names greedily and numbers with their sign', () => {
    const types = tokenize('a+1 3-2 -5 e5 TRUE true $body.a[0] a[0]').map((t) => `${t.type}:${t.text}`);
    assert.deepEqual(types, [
      'ID:a+1',
      'ID:3-2',
      'INTEGER:-5',
      'REAL:e5',
      'ID:TRUE',
      'TRUE:true',
      'SYS_PROP:$body.a[0]',
      'QUERY_PATH:a[0]',
      'EOF:',
    ]);
  });
});

type ErrorCase = [text: string, position: number, includes: string, line?: number];

/** Route statements that must fail, with the 1-based column reported and words the message must contain. */
const routeErrors: ErrorCase[] = [
  ['FROM /messages/* WHER x INTO $upstream', 18, 'expected WHERE or INTO, found "WHER"'],
  ['FROM /messages/* WHERE true WHER $upstream', 29, 'expected INTO, found "WHER"'],
  ["FROM /messages/* WHERE key1 = 'a' INTO", 39, 'expected $upstream or BrokeredEndpoint'],
  ['FROM /messages/* WHERE INTO $upstream', 24, 'expected a condition after WHERE, found "INTO"'],
  ['FROM INTO $upstream', 6, 'expected a source path'],
  ['FORM /messages/* INTO $upstream', 1, 'expected SELECT or FROM, found "FORM"'],
  ['SELECT FROM /messages INTO $upstream', 8, 'expected "*" after SELECT'],
  ['', 1, 'empty route'],
  ['FROM /messages WHERE temp == 100 INTO $upstream', 28, 'expected an expression, found "="'],
  ["FROM /messages WHERE (key1 = 'x' INTO $upstream", 34, 'expected ")" to close the "(" at position 22'],
  ["FROM /messages WHERE key1 = 'x') INTO $upstream", 32, 'expected INTO, found ")"'],
  ["FROM /messages WHERE key1 = 'x INTO $upstream", 29, 'unterminated string'],
  ['FROM /messages WHERE key1 = @x INTO $upstream', 29, 'invalid symbol "@"'],
  [
    'FROM /messages WHERE temp > 30 INTO $upstream',
    27,
    'invalid operands to binary operator ">": have string and number',
  ],
  ['FROM /messages WHERE foo(1) INTO $upstream', 22, 'unknown function "foo"'],
  [
    "FROM /messages WHERE lower(3) = 'x' INTO $upstream",
    22,
    'invalid arguments to function "lower": lower(number); expected lower(string)',
  ],
  ['FROM /messages WHERE 3 -5 = key1 INTO $upstream', 24, 'found "-5"'],
  ['FROM /messages INTO BrokeredEndpoint("/modules/m1")', 38, 'not of the form /modules/{module}/inputs/{input}'],
  ['FROM /messages INTO Brokered("/modules/m1/inputs/i1")', 21, 'unknown endpoint function "Brokered"'],
  ['FROM /messages INTO BrokeredEndpoint(/modules/m1/inputs/i1)', 38, 'expected a quoted address'],
  ['FROM /messages INTO BrokeredEndpoint("/modules/m1/inputs/i1"', 61, 'expected ")"'],
  ['FROM /messages INTO $upstream extra', 31, 'expected end of route, found "extra"'],
  ['FROM /messages INTO upstream', 21, 'expected $upstream or BrokeredEndpoint'],
  ['FROM /messages INTO $cloud', 21, 'unknown system endpoint "$cloud"'],
  [
    'FROM /messages WHERE twin_change_includes(properties.reported.x) INTO $upstream',
    22,
    'only be used in routes FROM /twinChangeNotifications',
  ],
  [
    'FROM /twinChangeNotifications WHERE twin_change_includes(foo.bar) INTO $upstream',
    37,
    '"foo.bar" is not supported',
  ],
  ['FROM /twinChangeNotifications WHERE twin_change_includes() INTO $upstream', 37, 'needs a path argument'],
  ['FROM /messages WHERE $body. = 1 INTO $upstream', 22, 'needs a path after "$body."'],
  ['FROM /messages WHERE $body.a..b = 1 INTO $upstream', 22, 'empty name in $body path'],
  ['FROM /messages WHERE $body.a.0 = 1 INTO $upstream', 22, '"0" is not a name'],
  ["FROM /messages WHERE key1 = 'a'\n  AND @ INTO $upstream", 7, 'invalid symbol "@"', 2],
];

/** Conditions that compile-fail on their own (types are checked when the route is compiled, as in the original). */
const conditionErrors: ErrorCase[] = [
  ["NOT key1 = 'value1'", 1, 'invalid operands to unary operator "NOT": have string'],
  ["missing ?? 'd' = 'd'", 9, 'invalid operands to binary operator "??": have string and bool'],
  ["'a' + 'b' = 'ab'", 5, 'invalid operands to binary operator "+": have string and string'],
  ['1 < 2 < 3', 7, 'have bool and number'],
  ['key1 = undefined', 6, 'have string and undefined'],
  ['3 + undefined = 3', 3, 'have number and undefined'],
  ["'a' || 3 = 'a3'", 5, 'have string and number'],
  ["concat('a') = 'a'", 1, 'expected concat(string, string, ...)'],
  ["substring('abc', '1') = 'bc'", 1, 'substring(string, number) or substring(string, number, number)'],
  ['is_defined(1, 2)', 1, 'invalid arguments to function "is_defined"'],
  ['as_number(null) = 1', 1, 'invalid arguments to function "as_number"'],
  ['- key1 = 1', 1, 'unary operator "-": have string'],
  ['$body.a = undefined', 9, 'have $body value and undefined'],
  ['key1 AND true', 6, 'binary operator "AND": have string and bool'],
  ['true true', 6, 'expected an operator or end of condition, found "true"'],
  ['32 = [32]', 6, '"[" and "]" may only follow $body'],
  ['(@)', 2, 'invalid symbol "@"'],
  ['{key1} = 1', 2, 'expected a $name after "{"'],
];

function expectError(fn: () => unknown, [text, position, includes, line = 1]: ErrorCase) {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof RouteSyntaxError, `no RouteSyntaxError for ${JSON.stringify(text)}: ${String(err)}`);
  assert.ok(err instanceof UserError, 'prints as one line on the CLI');
  assert.equal(err.line, line, `line for ${JSON.stringify(text)}: ${err.message}`);
  assert.equal(err.column, position, `column for ${JSON.stringify(text)}: ${err.message}`);
  assert.ok(
    err.message.startsWith(line === 1 ? `position ${position}: ` : `line ${line}, column ${position}: `),
    err.message,
  );
  assert.ok(
    err.message.includes(includes),
    `${JSON.stringify(err.message)} should include ${JSON.stringify(includes)}`,
  );
}

describe('parse errors name the position and what was expected', () => {
  for (const c of routeErrors) it(`route: ${JSON.stringify(c[0])}`, () => expectError(() => parseRoute(c[0]), c));
  for (const c of conditionErrors)
    it(`condition: ${JSON.stringify(c[0])}`, () => expectError(() => compileCondition(c[0]), c));

  it('records what was expected and what was found', () => {
    try {
      parseRoute('FROM /messages/* WHER x INTO $upstream');
      assert.fail('should not parse');
    } catch (e) {
      assert.ok(e instanceof RouteSyntaxError);
      assert.equal(e.message, 'position 18: expected WHERE or INTO, found "WHER"');
      assert.equal(e.expected, 'WHERE or INTO');
      assert.equal(e.found, '"WHER"');
    }
  });

  it('hostile nesting is a clear error, not a stack overflow', () => {
    const deep = '('.repeat(100_000) + 'true' + ')'.repeat(100_000);
    assert.throws(
      () => compileCondition(deep),
      (e: unknown) => e instanceof RouteSyntaxError && /nested more than 200 levels/.test(e.message),
    );
    assert.throws(() => compileCondition('NOT '.repeat(100_000) + 'true'), RouteSyntaxError);
    assert.equal(compileCondition('('.repeat(150) + 'true' + ')'.repeat(150)).evaluate(device), true);
    assert.throws(
      () => compileCondition(Array(100_000).fill('true').join(' AND ')),
      (e: unknown) => e instanceof RouteSyntaxError && /too complex/.test(e.message),
    );
    assert.equal(compileCondition(Array(400).fill('true').join(' AND ')).evaluate(device), true);
  });

  it('"==" gets a hint', () => {
    assert.throws(
      () => parseRoute("FROM /messages WHERE key1 == 'x' INTO $upstream"),
      (e: unknown) => e instanceof RouteSyntaxError && /single "="/.test(e.hint ?? ''),
    );
  });

  it('a type error says how to fix it', () => {
    try {
      compileCondition('temp > 30');
      assert.fail('should not compile');
    } catch (e) {
      assert.ok(e instanceof RouteSyntaxError);
      assert.match(e.hint ?? '', /as_number/);
    }
  });
});
