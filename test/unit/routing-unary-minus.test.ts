/**
 * Unary minus on `$body` values (issue 17, finding 11). A body value's kind is known only when
 * the message is evaluated, so negating it is a number operation that compiles, as the
 * original's type checker allows it. `-$body.hum` written without a space is one name token
 * (the lexer keeps the original's rule that "-" is a name character); it reads the application
 * property of that literal name when the message has one, else the negated body value.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compileCondition } from '../../src/routing/evaluate.ts';
import type { RoutableMessage } from '../../src/routing/message.ts';
import { RouteTable, routeTableFromEdgeHubDesired } from '../../src/routing/route-table.ts';

function reading(body: unknown, appProperties: Record<string, string> = {}): RoutableMessage {
  return {
    source: '/messages',
    body: Buffer.from(JSON.stringify(body), 'utf8'),
    systemProperties: { contentType: 'application/json', contentEncoding: 'utf-8', connectionDeviceId: 'sensor-1' },
    appProperties,
  };
}

describe('unary minus on $body values', () => {
  it('`-$body.hum = -40` compiles and is true for hum 40, false for 39, undefined for a string', () => {
    const c = compileCondition('-$body.hum = -40');
    assert.equal(c.evaluate(reading({ hum: 40 })), true);
    assert.equal(c.evaluate(reading({ hum: 39 })), false);
    assert.equal(c.evaluate(reading({ hum: '40' })), undefined);
  });

  it('with a space, in parentheses, escaped, in arithmetic and with an index', () => {
    const hum40 = reading({ hum: 40, a: [1, 2] });
    for (const text of [
      '- $body.hum = -40',
      '-($body.hum) = -40',
      '-{$body.hum} = -40',
      '-$body.hum * 2 = -80',
      '-$body.hum < 0',
      '-$body.a[1] = -2',
      '-$body.hum + 40 = 0',
    ]) {
      assert.equal(compileCondition(text).evaluate(hum40), true, text);
    }
  });

  it('a missing or non-number body value negates to undefined, never to a match', () => {
    const c = compileCondition('-$body.hum <> 5');
    assert.equal(c.evaluate(reading({ other: 1 })), undefined);
    assert.equal(c.evaluate(reading({ hum: true })), undefined);
    assert.equal(c.evaluate(reading({ hum: null })), undefined);
  });

  it('an application property literally named "-$body.hum" still wins, as `$body.x` lets one win', () => {
    const c = compileCondition("-$body.hum = 'x'");
    assert.equal(c.evaluate(reading({ hum: 40 }, { '-$body.hum': 'x' })), true);
    assert.equal(c.evaluate(reading({ hum: 40 })), false);
  });

  it('the route set with such a condition is accepted, and the route takes the message', () => {
    const table = routeTableFromEdgeHubDesired({
      schemaVersion: '1.1',
      routes: {
        cold: 'FROM /messages/* WHERE -$body.hum = -40 INTO $upstream',
        all: 'FROM /messages/* INTO BrokeredEndpoint("/modules/m/inputs/i")',
      },
      storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
    });
    assert.ok(table instanceof RouteTable);
    assert.deepEqual(
      table.match(reading({ hum: 40 })).map((d) => d.endpoint.id),
      ['$upstream', '/modules/m/inputs/i'],
    );
    assert.deepEqual(
      table.match(reading({ hum: 41 })).map((d) => d.endpoint.id),
      ['/modules/m/inputs/i'],
    );
  });

  it('unary minus on an application property (a string) is still a type error', () => {
    assert.throws(() => compileCondition('- temp = -40'), /invalid operands to unary operator "-": have string/);
  });
});
