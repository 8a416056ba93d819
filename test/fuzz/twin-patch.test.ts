/**
 * Property-based fuzzing of the twin patch code with fast-check: random JSON text (deep, wide,
 * odd numbers and strings, prototype keys such as __proto__ and constructor, `$` and `.` in
 * names) goes through JSON.parse, as it does off the wire, into every twin write of the
 * registry (reported patch, desired/tags patch and replace, module twins). Each write either
 * succeeds, leaving a twin that serialises, or is refused with a HubError 400; nothing else is
 * thrown, and Object.prototype is never touched. The depth measure is checked against a plain
 * recursive one.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { HubError } from '../../src/model/errors.ts';
import { Registry } from '../../src/hub/registry.ts';
import { openNodeDb } from '../../src/store/db.ts';
import { SqliteRegistryStore } from '../../src/store/registry-store.ts';
import { nestsDeeperThan } from '../../src/util/json-depth.ts';
import { checkProperty, fuzzParams, fuzzTimeoutMs, objectPrototypeAdditions } from './fuzz-budget.ts';

/** A JSON document as a tree, written out as text by hand so that keys like __proto__ stay own keys after JSON.parse. */
type Tree =
  | { t: 'scalar'; text: string }
  | { t: 'array'; items: Tree[] }
  | { t: 'object'; entries: Array<[string, Tree]> };

const prototypeKeys = fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf');
const oddKeys = fc.constantFrom(
  '$version',
  '$metadata',
  '$x',
  'a.b',
  'a b',
  '',
  '\u0000',
  '\u007f',
  '\u0085',
  'ü',
  '🙂',
  'k'.repeat(1025),
);
const key = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 2, arbitrary: prototypeKeys },
  { weight: 1, arbitrary: oddKeys },
  { weight: 4, arbitrary: fc.constantFrom('a', 'b', 'c', 'temp', 'mode') },
);
const scalarText = fc.oneof(
  fc.constantFrom(
    'null',
    'true',
    'false',
    '0',
    '-0',
    '1e308',
    '-1e308',
    '4503599627370495',
    '4503599627370496',
    '-4503599627370497',
    '1.5e-320',
    '123456789012345678901234567890',
  ),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((n) => JSON.stringify(n)),
  fc.string({ maxLength: 20 }).map((s) => JSON.stringify(s)),
  fc.constantFrom(JSON.stringify('x'.repeat(5000)), JSON.stringify('\ud800'), JSON.stringify('\u0000')),
);

/** Trees with keys from `keys`: wild ones (any name) are mostly refused, tame ones (legal names and prototype names) mostly get as far as the merge. */
const treeOf = (keys: fc.Arbitrary<string>, scalars: fc.Arbitrary<string>) =>
  fc.letrec<{ tree: Tree }>((tie) => ({
    tree: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      scalars.map((text): Tree => ({ t: 'scalar', text })),
      fc.array(tie('tree'), { maxLength: 5 }).map((items): Tree => ({ t: 'array', items })),
      fc.array(fc.tuple(keys, tie('tree')), { maxLength: 6 }).map((entries): Tree => ({ t: 'object', entries })),
    ),
  })).tree;
const tameKey = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('a', 'b', 'c', 'temp', 'mode') },
  { weight: 2, arbitrary: prototypeKeys },
);
const tameScalar = fc.oneof(
  fc.constantFrom('null', 'true', 'false', '0', '-0', '1.5'),
  fc.integer().map(String),
  fc.string({ maxLength: 8 }).map((x) => JSON.stringify(x)),
);
const tree = fc.oneof(treeOf(key, scalarText), treeOf(tameKey, tameScalar));
const wildOrTameKey = fc.oneof(key, tameKey);

function write(t: Tree): string {
  if (t.t === 'scalar') return t.text;
  if (t.t === 'array') return `[${t.items.map(write).join(',')}]`;
  return `{${t.entries.map(([k, v]) => `${JSON.stringify(k)}:${write(v)}`).join(',')}}`;
}

/** An object at the top (a patch must be one), sometimes wrapped in thousands of levels. */
const patchText = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .array(fc.tuple(wildOrTameKey, tree), { maxLength: 6 })
      .map((entries) => write({ t: 'object', entries })),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.integer({ min: 1, max: 20_000 }), fc.constantFrom('[', '{"a":'), key).map(([n, open, k]) => {
      const close = open === '[' ? ']' : '}';
      return `{${JSON.stringify(k)}:${open.repeat(n)}1${close.repeat(n)}}`;
    }),
  },
  {
    weight: 1,
    arbitrary: fc
      .integer({ min: 1, max: 2_000 })
      .map((n) => `{${Array.from({ length: n }, (_, i) => `"k${i}":${i}`).join(',')}}`),
  },
);

const operations = [
  'reported',
  'module-reported',
  'desired-patch',
  'desired-replace',
  'tags-patch',
  'module-desired',
] as const;

test('twin writes with random JSON: accepted (and serialisable) or a 400, never another error, never Object.prototype', {
  timeout: fuzzTimeoutMs(120_000),
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'strata-fuzz-twin-'));
  const db = openNodeDb(join(dir, 'hub.db'));
  // Durability is not under test here, and a flush per write would spend the time budget on the disk.
  db.sqlite.pragma('synchronous = OFF');
  t.after(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const registry = new Registry(new SqliteRegistryStore(db), { hostname: 'fuzz.test' });
  registry.putDevice('d', {});
  registry.putModule('d', 'm', { deviceId: 'd', moduleId: 'm' });

  await checkProperty(
    fc.property(patchText, fc.constantFrom(...operations), (text, op) => {
      const value = JSON.parse(text) as Record<string, unknown>;
      try {
        switch (op) {
          case 'reported':
            registry.updateReported('d', undefined, value);
            break;
          case 'module-reported':
            registry.updateReported('d', 'm', value);
            break;
          case 'desired-patch':
            registry.updateTwin('d', undefined, { properties: { desired: value } }, '*', 'patch');
            break;
          case 'desired-replace':
            registry.updateTwin('d', undefined, { tags: value, properties: { desired: value } }, '*', 'replace');
            break;
          case 'tags-patch':
            registry.updateTwin('d', undefined, { tags: value }, '*', 'patch');
            break;
          case 'module-desired':
            registry.updateTwin('d', 'm', { properties: { desired: value } }, '*', 'patch');
            break;
        }
      } catch (err) {
        assert.ok(err instanceof HubError, `${op} threw ${String(err)} for ${text.slice(0, 200)}`);
        assert.equal(err.status, 400, `${op}: ${err.message}`);
        assert.ok(err.message.length > 0 && err.message.length < 2000, 'a clear, bounded message');
      }
      // Whatever happened, the twins still read and serialise, and nothing leaked into Object.prototype.
      JSON.stringify(registry.getTwin('d'));
      JSON.stringify(registry.getTwin('d', 'm'));
      assert.deepEqual(objectPrototypeAdditions(), [], `Object.prototype changed by ${op} of ${text.slice(0, 200)}`);
      assert.equal(Object.getPrototypeOf({}), Object.prototype);
    }),
    fuzzParams(200),
  );
});

test('the depth measure (objects and arrays alike) agrees with a plain recursive one', {
  timeout: fuzzTimeoutMs(60_000),
}, async () => {
  const depthOf = (v: unknown): number => {
    if (v === null || typeof v !== 'object') return 0;
    const members = Array.isArray(v) ? v : Object.values(v);
    return members.reduce<number>((d, m) => Math.max(d, m !== null && typeof m === 'object' ? 1 + depthOf(m) : 0), 0);
  };
  await checkProperty(
    fc.property(tree, fc.integer({ min: 0, max: 12 }), (tr, max) => {
      const v = JSON.parse(write(tr));
      assert.equal(nestsDeeperThan(v, max), depthOf(v) > max);
    }),
    fuzzParams(1000),
  );
});
