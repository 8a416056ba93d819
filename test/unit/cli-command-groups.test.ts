import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Command } from 'commander';
import { COMMAND_GROUPS, groupNamed, registerAllCommands, registerCommands } from '../../src/cli/commands.ts';

test('the root help describes each group as the group itself does', async () => {
  const program = new Command();
  await registerAllCommands(program);
  assert.deepEqual(
    program.commands.map((c) => [c.name(), c.description()]),
    COMMAND_GROUPS.map((g) => [g.name, g.description]),
  );
});

test('the group a command line names', () => {
  assert.equal(groupNamed(['device', 'list', '--json'])?.name, 'device');
  assert.equal(groupNamed(['--json', 'hub', 'connection-string'])?.name, 'hub');
  assert.equal(groupNamed(['help', 'edge'])?.name, 'edge');
  assert.equal(groupNamed(['--help']), undefined);
  assert.equal(groupNamed([]), undefined);
  assert.equal(groupNamed(['devcie']), undefined);
});

test('only the named group gets its subcommands', async () => {
  const program = new Command();
  await registerCommands(program, ['device', 'list']);
  const device = program.commands.find((c) => c.name() === 'device')!;
  const hub = program.commands.find((c) => c.name() === 'hub')!;
  assert.ok(device.commands.some((c) => c.name() === 'list'));
  assert.ok(device.commands.some((c) => c.name() === 'send'));
  assert.equal(hub.commands.length, 0);
  assert.equal(program.commands.length, COMMAND_GROUPS.length);
});
