/**
 * Property-based fuzzing of the route language with fast-check: random strings, strings built
 * from the language's own tokens, and valid routes mutated character by character go to the
 * route parser, which returns a route or throws a RouteSyntaxError, nothing else, and never
 * takes long; every route that compiles is evaluated against random messages (odd, deep and
 * broken JSON bodies, odd properties) without throwing; random `$edgeHub` desired properties
 * become a route table or a RouteConfigError/RouteSyntaxError.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { RouteConfigError, RouteSyntaxError } from '../../src/routing/errors.ts';
import type { RoutableMessage } from '../../src/routing/message.ts';
import { parseRoute, type ParsedRoute } from '../../src/routing/parser.ts';
import { routeTableFromEdgeHubDesired } from '../../src/routing/route-table.ts';
import { checkProperty, fuzzParams, fuzzTimeoutMs } from './fuzz-budget.ts';

/**
 * Longest a parse may take: linear in the text, with room for a busy machine. Catches a hang or
 * a blow-up (quadratic backtracking), not a slow parse of half a megabyte.
 */
const parseBudgetMs = (text: string): number => 2_000 + text.length * 0.05;

const VALID_ROUTES = [
  'FROM /messages/* INTO $upstream',
  'SELECT * FROM /messages/modules/filter/outputs/out1 INTO BrokeredEndpoint("/modules/sink/inputs/in1")',
  "FROM /messages/* WHERE temperature > 30 AND $connectionDeviceId = 'dev-1' INTO $upstream",
  'FROM /messages/* WHERE $body.sensor.temp >= 20.5 OR NOT IS_DEFINED($body.x) INTO $upstream',
  'FROM /messages/* WHERE -$body.hum = -40 INTO $upstream',
  "FROM /messages/* WHERE CONCAT(a, '-', b) = 'x-y' AND LENGTH(name) < 10 INTO $upstream",
  'FROM /twinChangeNotifications WHERE twin_change_includes(properties.reported.x) INTO $upstream',
  "FROM /messages/* WHERE (a = 1 OR b = 2) AND (c <> 'd' OR e ?? f = 3) INTO $upstream",
  'FROM /messages/* WHERE as_number($body.v) % 2 = 0 INTO $upstream',
];

const TOKENS = [
  'FROM',
  'SELECT',
  '*',
  'WHERE',
  'INTO',
  '$upstream',
  'BrokeredEndpoint(',
  '"/modules/m/inputs/i"',
  ')',
  '(',
  '/messages/*',
  '/messages',
  '/',
  'modules',
  'outputs',
  'AND',
  'OR',
  'NOT',
  '=',
  '!=',
  '<>',
  '<',
  '<=',
  '>',
  '>=',
  '+',
  '-',
  '*',
  '/',
  '%',
  '||',
  '??',
  ',',
  '.',
  '[',
  ']',
  "'text'",
  "'unterminated",
  '"dq"',
  '123',
  '-0',
  '1e309',
  '0x1F',
  '.5',
  'true',
  'false',
  'null',
  'undefined',
  '$body',
  '$body.a.b',
  '$body[0]',
  '$body["x"]',
  '$connectionDeviceId',
  '$contentType',
  '{',
  '}',
  'IS_DEFINED(',
  'IS_STRING(',
  'CONCAT(',
  'LENGTH(',
  'SUBSTRING(',
  'ABS(',
  'as_number(',
  'twin_change_includes(',
  'UNKNOWN_FN(',
  'temperature',
  'a',
  'b',
  ' ',
  '\n',
  '\t',
  '\u0000',
  'é',
  '🙂',
  '\\',
  '"',
  "'",
];

const tokenSoup = fc.array(fc.constantFrom(...TOKENS), { maxLength: 40 }).map((ts) => ts.join(' '));
const tightSoup = fc.array(fc.constantFrom(...TOKENS), { maxLength: 40 }).map((ts) => ts.join(''));

/** A valid route with a few characters inserted, deleted or replaced. */
const mutated = fc
  .tuple(
    fc.constantFrom(...VALID_ROUTES),
    fc.array(
      fc.tuple(fc.nat(), fc.constantFrom('insert', 'delete', 'replace'), fc.string({ minLength: 1, maxLength: 3 })),
      { minLength: 1, maxLength: 6 },
    ),
  )
  .map(([route, edits]) => {
    let s = route;
    for (const [at, kind, text] of edits) {
      const i = at % (s.length + 1);
      if (kind === 'insert') s = s.slice(0, i) + text + s.slice(i);
      else if (kind === 'delete') s = s.slice(0, i) + s.slice(i + text.length);
      else s = s.slice(0, i) + text + s.slice(i + text.length);
    }
    return s;
  });

/** Long and deep: nesting and chains that a recursive parser or compiler could overflow on. */
const hostile = fc.noShrink(
  fc
    .tuple(
      fc.integer({ min: 1, max: 20_000 }),
      fc.constantFrom('(', 'NOT ', '-', 'CONCAT(', '$body.a', 'a = 1 AND ', 'a + ', '[', "'"),
    )
    .map(([n, piece]) => `FROM /messages/* WHERE ${piece.repeat(n)}1 INTO $upstream`),
); // shrinking 200 KB of text would cost minutes; the piece and count already say what failed

const routeText = fc.oneof(
  { weight: 3, arbitrary: mutated },
  { weight: 2, arbitrary: tokenSoup },
  { weight: 2, arbitrary: tightSoup },
  { weight: 1, arbitrary: fc.string({ maxLength: 200, unit: 'binary' }) },
  { weight: 1, arbitrary: hostile },
  { weight: 1, arbitrary: fc.constantFrom(...VALID_ROUTES) },
);

const jsonBodyText = fc.oneof(
  fc.json({ depthSize: 'small' }),
  fc.integer({ min: 1, max: 20_000 }).map((n) => `{"a":${'['.repeat(n)}${']'.repeat(n)}}`),
  fc.integer({ min: 1, max: 5_000 }).map((n) => `${'{"a":'.repeat(n)}1${'}'.repeat(n)}`),
  fc.constantFrom(
    '{"sensor":{"temp":25}}',
    '{"__proto__":{"x":1},"constructor":1}',
    '{"v":1e400}',
    '{"hum":-40}',
    '{',
    '',
    'null',
    '[]',
    '"str"',
  ),
);

const message: fc.Arbitrary<RoutableMessage> = fc.record({
  body: fc.oneof(
    jsonBodyText.map((s) => Buffer.from(s)),
    fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  ),
  systemProperties: fc.record(
    {
      contentType: fc.constantFrom('application/json', 'application/JSON', 'text/plain', ''),
      contentEncoding: fc.constantFrom('utf-8', 'UTF-8', 'utf-16', 'utf-32', 'base64', ''),
      connectionDeviceId: fc.string({ maxLength: 10 }),
      messageId: fc.string({ maxLength: 10 }),
    },
    { requiredKeys: [] },
  ),
  appProperties: fc.dictionary(
    fc.constantFrom('temperature', 'a', 'b', 'c', 'e', 'f', 'name', '__proto__', 'constructor'),
    fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('30', '-1', '1e5', 'NaN', 'true')),
  ),
  source: fc.constantFrom('/messages', '/messages/modules/filter/outputs/out1', '/twinChangeNotifications', ''),
});

function parseOrRefuse(text: string): ParsedRoute | undefined {
  const started = performance.now();
  try {
    return parseRoute(text);
  } catch (err) {
    assert.ok(
      err instanceof RouteSyntaxError,
      `parseRoute threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)} for ${JSON.stringify(text.slice(0, 200))}`,
    );
    assert.ok(err.message.length > 0);
    return undefined;
  } finally {
    const ms = performance.now() - started;
    assert.ok(ms < parseBudgetMs(text), `parsing took ${Math.round(ms)} ms for ${JSON.stringify(text.slice(0, 200))}`);
  }
}

test('route text: a route or a RouteSyntaxError, quickly; compiled routes evaluate any message without throwing', {
  timeout: fuzzTimeoutMs(90_000),
}, async () => {
  await checkProperty(
    fc.property(routeText, fc.array(message, { maxLength: 3 }), (text, messages) => {
      const route = parseOrRefuse(text);
      if (!route) return;
      for (const m of messages) {
        const r = route.condition.evaluate(m);
        assert.ok(r === true || r === false || r === undefined, `evaluate gave ${String(r)}`);
      }
    }),
    fuzzParams(500),
  );
});

const routeSpec = fc.oneof(
  routeText,
  fc.record(
    {
      route: routeText,
      priority: fc.oneof(fc.integer({ min: -5, max: 12 }), fc.constantFrom(1.5, '1', null)),
      timeToLiveSecs: fc.oneof(fc.integer({ min: -10, max: 1e10 }), fc.constantFrom(1.5, 'x', null)),
    },
    { requiredKeys: [] },
  ),
  fc.constantFrom(null, 1, [], {}),
);

test('$edgeHub desired properties: a route table or a RouteConfigError/RouteSyntaxError', {
  timeout: fuzzTimeoutMs(60_000),
}, async () => {
  await checkProperty(
    fc.property(
      fc.record(
        {
          schemaVersion: fc.oneof(
            fc.constantFrom('1.0', '1.1', '1.2', '1.3', '1.4', '2.0', '1', '', ' 1.1 '),
            fc.string({ maxLength: 5 }),
            fc.constantFrom(1.1, null),
          ),
          routes: fc.oneof(
            fc.dictionary(
              fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('__proto__', 'constructor')),
              routeSpec,
              { maxKeys: 4 },
            ),
            fc.constantFrom(null, [], 'x'),
          ),
          storeAndForwardConfiguration: fc.oneof(
            fc.record(
              {
                timeToLiveSecs: fc.oneof(fc.integer(), fc.double(), fc.constantFrom('7200', null)),
                storeLimits: fc.oneof(
                  fc.record({ maxSizeBytes: fc.oneof(fc.integer(), fc.constantFrom(-1, 1.5, 'x')) }),
                  fc.constantFrom(null, 1),
                ),
              },
              { requiredKeys: [] },
            ),
            fc.constantFrom(null, 'x', []),
          ),
        },
        { requiredKeys: [] },
      ),
      (desired) => {
        try {
          routeTableFromEdgeHubDesired(JSON.parse(JSON.stringify(desired)));
        } catch (err) {
          assert.ok(
            err instanceof RouteConfigError || err instanceof RouteSyntaxError,
            `threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`,
          );
        }
      },
    ),
    fuzzParams(300),
  );
});
