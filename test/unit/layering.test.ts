// The import rules of .dependency-cruiser.cjs bite: run on small trees under
// test/fixtures/layering/, they report a wrong-way import and a circle, and pass a right-way tree.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cruise, type IConfiguration, type ICruiseResult } from 'dependency-cruiser';
import extractTSConfig from 'dependency-cruiser/config-utl/extract-ts-config';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const FIXTURES = join(ROOT, 'test', 'fixtures', 'layering');

async function violations(tree: string): Promise<string[]> {
  // The project's own config, as `npm run lint` uses it.
  const config = createRequire(import.meta.url)(join(ROOT, '.dependency-cruiser.cjs')) as IConfiguration;
  const { output } = await cruise(
    ['src'],
    { ...config.options, ruleSet: { forbidden: config.forbidden }, validate: true, baseDir: join(FIXTURES, tree) },
    {},
    { tsConfig: extractTSConfig(join(ROOT, 'tsconfig.json')) },
  );
  const result = output as ICruiseResult;
  // A cruise that read no file reports nothing and would pass whatever the imports.
  assert.ok(result.summary.totalCruised > 0, `dependency-cruiser read no file of ${tree}/src`);
  return result.summary.violations.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`).sort();
}

test('a wrong-way import, a circle and one role importing the other are reported', async () => {
  assert.deepEqual(await violations('wrong'), [
    'layer-edge: src/edge/gateway.ts -> src/hub/hub.ts',
    'layer-model: src/model/message.ts -> src/engine/engine.ts',
    'no-circular: src/store/cache.ts -> src/store/writer.ts',
  ]);
});

test('imports that only go down pass', async () => {
  assert.deepEqual(await violations('right'), []);
});
