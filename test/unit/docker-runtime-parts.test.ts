/**
 * The Docker runtime's pure parts: the `[moby_runtime] uri` forms, createOptions merged as IoT
 * Edge merges them, and the engine's multiplexed log stream made into lines however it is cut.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { containerConfig, engineConnection } from '../../src/agent/docker-runtime.ts';
import { LogLines } from '../../src/agent/docker-stream.ts';
import type { ModuleSpec } from '../../src/agent/runtime.ts';

test('moby_runtime uri: unix socket and tcp; anything else is refused naming the setting', () => {
  assert.deepEqual(engineConnection('unix:///var/run/docker.sock'), { socketPath: '/var/run/docker.sock' });
  assert.deepEqual(engineConnection('tcp://10.0.0.5:2375'), { host: '10.0.0.5', port: 2375, protocol: 'http' });
  assert.throws(() => engineConnection('not a uri'), /\[moby_runtime\] uri: "not a uri" is not a URI/);
  assert.throws(() => engineConnection('npipe://./pipe/docker_engine'), /\[moby_runtime\] uri: scheme "npipe:"/);
  assert.throws(() => engineConnection('tcp://10.0.0.5'), /needs a host and a port/);
  assert.throws(() => engineConnection('unix://'), /names no socket path/);
});

test('createOptions: deployment env joins Env and wins, labels join and ours win, the rest as given', () => {
  const spec: ModuleSpec = {
    name: 'filter',
    type: 'docker',
    image: 'example/filter:2',
    createOptions: {
      name: 'ignored',
      Env: ['A=1', 'B=from-create', 'C'],
      Labels: { 'x.user': 'u', 'net.strata.module': 'forged' },
      HostConfig: { Binds: ['/a:/b'], PortBindings: { '80/tcp': [{ HostPort: '8080' }] } },
      Cmd: ['run'],
    },
    env: { B: 'from-deployment', D: '4' },
    specHash: 'h',
  };
  const config = containerConfig(spec, { 'net.strata.module': 'filter' });
  assert.equal(config.Image, 'example/filter:2');
  assert.deepEqual(config.Env, ['A=1', 'B=from-deployment', 'C', 'D=4']);
  assert.deepEqual(config.Labels, { 'x.user': 'u', 'net.strata.module': 'filter' });
  assert.deepEqual(config.HostConfig, spec.createOptions?.HostConfig);
  assert.deepEqual(config.Cmd, ['run']);
  assert.equal((config as Record<string, unknown>).name, undefined);
});

function frame(stream: number, text: string): Buffer {
  const payload = Buffer.from(text);
  const header = Buffer.alloc(8);
  header[0] = stream;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
}

test('multiplexed logs: lines per stream, whatever the chunk boundaries', () => {
  const wire = Buffer.concat([
    frame(1, 'out one\nout tw'),
    frame(2, 'err one\n'),
    frame(1, 'o\r\n'),
    frame(2, 'err ✓ two'),
  ]);
  const expected = ['out one', 'err one', 'out two', 'err ✓ two'];
  for (let cut = 1; cut <= wire.length; cut++) {
    const lines = new LogLines(true);
    const out: string[] = [];
    for (let i = 0; i < wire.length; i += cut) out.push(...lines.push(wire.subarray(i, i + cut)));
    out.push(...lines.end());
    assert.deepEqual(out, expected, `chunks of ${cut} bytes`);
  }
});

test('TTY logs are raw bytes, split into lines', () => {
  const lines = new LogLines(false);
  assert.deepEqual(
    [...lines.push(Buffer.from('a\nb')), ...lines.push(Buffer.from('c\n')), ...lines.end()],
    ['a', 'bc'],
  );
});
