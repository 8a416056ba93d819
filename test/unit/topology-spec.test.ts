import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  chainToHub,
  parseInterval,
  parseTopology,
  TopologyError,
  type TopologyProblem,
} from '../../src/topology/spec.ts';

const EXAMPLE = fileURLToPath(new URL('../../examples/topology.yaml', import.meta.url));

function problems(text: string): TopologyProblem[] {
  try {
    parseTopology(text, 't.yaml');
  } catch (err) {
    assert.ok(err instanceof TopologyError, `expected a TopologyError, got ${String(err)}`);
    return err.problems;
  }
  assert.fail('expected the topology to be refused');
}

/** The single problem of a file with one mistake. */
function only(text: string): TopologyProblem {
  const p = problems(text);
  assert.equal(p.length, 1, `expected one problem, got ${JSON.stringify(p)}`);
  return p[0]!;
}

const HUB = 'hub:\n  address: 127.10.0.1\n';

test('the bundled example: a hub, three gateway layers, two sensors on each layer', () => {
  const t = parseTopology(readFileSync(EXAMPLE, 'utf8'), EXAMPLE);
  assert.equal(t.hub.address, '127.10.0.1');
  assert.deepEqual(
    t.gateways.map((g) => [g.id, g.layer, g.address]),
    [
      ['gateway-l1', 1, '127.10.0.2'],
      ['gateway-l2', 2, '127.10.0.3'],
      ['gateway-l3', 3, '127.10.0.4'],
    ],
  );
  for (const g of t.gateways) assert.equal(t.devices.filter((d) => d.parent === g.id).length, 2, g.id);
  assert.deepEqual(new Set(t.devices.map((d) => d.protocol)), new Set(['mqtt', 'amqp']));
  assert.deepEqual(chainToHub(t, 'gateway-l3'), ['gateway-l3', 'gateway-l2', 'gateway-l1']);
});

test('gateways come top layer first whatever the file order; defaults for protocol and interval', () => {
  const t = parseTopology(`${HUB}gateways:
  - { id: c, parent: b, address: 127.10.0.4 }
  - { id: b, parent: a, address: 127.10.0.3 }
  - { id: a, parent: hub, address: 127.10.0.2 }
devices:
  - { id: s1, parent: c }
  - { id: s2, parent: a, protocol: AMQP, interval: 250ms }
  - { id: s3, parent: b, interval: 1.5 }
`);
  assert.deepEqual(
    t.gateways.map((g) => `${g.id}:${g.layer}`),
    ['a:1', 'b:2', 'c:3'],
  );
  assert.deepEqual(
    t.devices.map((d) => [d.id, d.protocol, d.intervalMs]),
    [
      ['s1', 'mqtt', 5000],
      ['s2', 'amqp', 250],
      ['s3', 'mqtt', 1500],
    ],
  );
});

test('intervals: ms, s, m and bare seconds', () => {
  assert.equal(parseInterval('500ms'), 500);
  assert.equal(parseInterval('2s'), 2000);
  assert.equal(parseInterval('1m'), 60_000);
  assert.equal(parseInterval(3), 3000);
  assert.equal(parseInterval('soon'), undefined);
});

test('a gateway naming an unknown parent: the line and the gateways there are', () => {
  const p = only(`${HUB}gateways:
  - id: a
    parent: hub
    address: 127.10.0.2
  - id: b
    parent: nope
    address: 127.10.0.3
`);
  assert.equal(p.line, 8);
  assert.match(
    p.message,
    /gateway b names the parent "nope", which is neither hub nor a gateway of this file \(gateways: a, b\)/,
  );
});

test('a device naming an unknown gateway, and a device directly under the hub', () => {
  const base = `${HUB}gateways:\n  - { id: a, parent: hub, address: 127.10.0.2 }\ndevices:\n`;
  assert.match(
    only(`${base}  - { id: s, parent: b }\n`).message,
    /device s names the parent "b", which is not a gateway of this file \(gateways: a\)/,
  );
  assert.match(only(`${base}  - { id: s, parent: hub }\n`).message, /leaf devices connect through a gateway/);
});

test('a cycle is reported once, naming the gateways on it', () => {
  const p = only(`${HUB}gateways:
  - { id: a, parent: hub, address: 127.10.0.2 }
  - { id: b, parent: c, address: 127.10.0.3 }
  - { id: c, parent: b, address: 127.10.0.4 }
`);
  assert.match(p.message, /gateways (b -> c -> b|c -> b -> c) form a cycle; the top gateway needs parent: hub/);
  assert.ok(p.line === 5 || p.line === 6);
});

test('a gateway that is its own parent', () => {
  assert.match(
    only(`${HUB}gateways:\n  - { id: a, parent: a, address: 127.10.0.2 }\n`).message,
    /gateway a names itself as its parent/,
  );
});

function chain(n: number): string {
  let text = `${HUB}gateways:\n`;
  for (let i = 1; i <= n; i++)
    text += `  - { id: g${i}, parent: ${i === 1 ? 'hub' : `g${i - 1}`}, address: 127.10.0.${i + 1} }\n`;
  return text;
}

test('five layers of gateways are allowed, six are not', () => {
  assert.equal(parseTopology(chain(5)).gateways.at(-1)!.layer, 5);
  const p = only(chain(6));
  assert.equal(p.line, 9);
  assert.match(
    p.message,
    /gateway g6 would be in layer 6 \(hub -> g1 -> g2 -> g3 -> g4 -> g5 -> g6\); at most 5 layers of gateways are allowed/,
  );
});

test('duplicate ids across gateways and devices, with the first line', () => {
  const p = only(`${HUB}gateways:
  - { id: a, parent: hub, address: 127.10.0.2 }
devices:
  - { id: a, parent: a }
`);
  assert.equal(p.line, 6);
  assert.match(p.message, /the id "a" is used twice \(first on line 4\)/);
});

test('duplicate addresses: a gateway on the hub address, two gateways on one address', () => {
  assert.match(
    only(`${HUB}gateways:\n  - { id: a, parent: hub, address: 127.10.0.1 }\n`).message,
    /gateway a has the address 127\.10\.0\.1, which the hub already has/,
  );
  assert.match(
    only(
      `${HUB}gateways:\n  - { id: a, parent: hub, address: 127.10.0.2 }\n  - { id: b, parent: a, address: 127.10.0.2 }\n`,
    ).message,
    /gateway b has the address 127\.10\.0\.2, which gateway a already has/,
  );
});

test('addresses must be IPv4 loopback addresses', () => {
  assert.match(
    only('hub:\n  address: 10.0.0.1\ngateways:\n  - { id: a, parent: hub, address: 127.10.0.2 }\n').message,
    /hub address 10\.0\.0\.1 is not a loopback address/,
  );
  assert.match(
    only(`${HUB}gateways:\n  - { id: a, parent: hub, address: gw.local }\n`).message,
    /gateway a: address "gw\.local" is not an IPv4 address/,
  );
});

test('protocol and interval are checked', () => {
  const base = `${HUB}gateways:\n  - { id: a, parent: hub, address: 127.10.0.2 }\ndevices:\n`;
  assert.match(
    only(`${base}  - { id: s, parent: a, protocol: http }\n`).message,
    /device s: protocol "http" is not supported; use mqtt or amqp/,
  );
  assert.match(
    only(`${base}  - { id: s, parent: a, interval: 10ms }\n`).message,
    /device s: interval "10ms" is not a time between 100ms and 1h/,
  );
  assert.match(only(`${base}  - { id: s, parent: a, interval: often }\n`).message, /interval "often"/);
});

test("a gateway's upstream protocol: any case of Amqp, AmqpWs, Mqtt, MqttWs; absent means the default", () => {
  const t = parseTopology(`${HUB}gateways:
  - { id: a, parent: hub, address: 127.10.0.2, upstream: mqtt }
  - { id: b, parent: a, address: 127.10.0.3, upstream: AmqpWs }
  - { id: c, parent: b, address: 127.10.0.4 }
`);
  assert.deepEqual(
    t.gateways.map((g) => [g.id, g.upstream]),
    [
      ['a', 'Mqtt'],
      ['b', 'AmqpWs'],
      ['c', undefined],
    ],
  );
  const p = only(`${HUB}gateways:\n  - { id: a, parent: hub, address: 127.10.0.2, upstream: http }\n`);
  assert.equal(p.line, 4);
  assert.match(p.message, /gateway a: upstream "http" is not one of Amqp, AmqpWs, Mqtt, MqttWs/);
});

test('unknown keys name the known ones; ids with path characters are refused', () => {
  const p = only(`${HUB}gateways:\n  - { id: a, parent: hub, address: 127.10.0.2, adress: x }\n`);
  assert.match(
    p.message,
    /gateway 1 has an unknown key "adress" \(known keys: id, parent, address, upstream, modules, routes\)/,
  );
  assert.match(
    only(`${HUB}gatways: []\ngateways:\n  - { id: a, parent: hub, address: 127.10.0.2 }\n`).message,
    /unknown key "gatways"/,
  );
  assert.match(
    only(`${HUB}gateways:\n  - { id: a/b, parent: hub, address: 127.10.0.2 }\n`).message,
    /gateway id "a\/b" may only use letters, digits/,
  );
  assert.match(
    only(`${HUB}gateways:\n  - { id: hub, parent: hub, address: 127.10.0.2 }\n`).message,
    /a gateway cannot be called "hub"/,
  );
});

test('missing pieces: no hub, no gateways, a gateway without an address', () => {
  assert.match(only('gateways:\n  - { id: a, parent: hub, address: 127.10.0.2 }\n').message, /declares no hub/);
  assert.match(only(HUB).message, /declares no gateways/);
  assert.match(only(`${HUB}gateways:\n  - { id: a, parent: hub }\n`).message, /gateway a has no address/);
  assert.match(only(`${HUB}gateways: a\n`).message, /gateways must be a list/);
});

test('YAML syntax errors and duplicate keys carry their line', () => {
  const bad = only(`${HUB}gateways:\n  - { id: a, parent: hub, address: 127.10.0.2\n`);
  assert.match(bad.message, /^not valid YAML/);
  assert.ok(bad.line !== undefined && bad.line >= 4, `line ${bad.line}`);
  const dup = only(`${HUB}hub:\n  address: 127.10.0.9\ngateways: []\n`);
  assert.match(dup.message, /not valid YAML: .*[Uu]nique/);
  assert.equal(dup.line, 3);
  assert.match(only('- just\n- a list\n').message, /must be a mapping with hub:, gateways: and devices:/);
});

test('every problem of a file is reported at once, in line order, in one message', () => {
  const text = `hub:\n  address: 8.8.8.8\ngateways:\n  - { id: a, parent: zz, address: 127.10.0.2 }\ndevices:\n  - { id: s, parent: a, protocol: coap }\n`;
  const p = problems(text);
  assert.deepEqual(
    p.map((x) => x.line),
    [2, 4, 6],
  );
  try {
    parseTopology(text, 'x.yaml');
  } catch (err) {
    assert.match(
      (err as Error).message,
      /^x\.yaml has 3 problems:\n {2}x\.yaml line 2: hub address 8\.8\.8\.8 is not a loopback address/,
    );
  }
});
