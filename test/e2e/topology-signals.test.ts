/**
 * `strata topology up --watch` owns the nodes it started (they are detached, so a terminal's
 * Ctrl-C does not reach them): SIGTERM to it brings every node down, and so does the loss of
 * its parent (an `npm start` killed with SIGKILL), with no process or listener left.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pidAlive } from '../../src/topology/processes.ts';
import { processesTopDown, readState } from '../../src/topology/state.ts';

const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

async function until(what: string, ms: number, ok: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * A hub and one gateway under `up --watch`, started by `sh` (standing in for npm) when
 * `viaParent`, else directly. Returns the processes and what `up` printed.
 */
async function startTopology(t: { after: (fn: () => Promise<void>) => void }, viaParent: boolean) {
  const dir = await mkdtemp(join(tmpdir(), 'strata-topology-signals-'));
  const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
  const last = randomInt(2, 250);
  const [hubAddr, gwAddr] = [`${base}.${last}`, `${base}.${last + 1}`];
  const file = join(dir, 'topology.yaml');
  await writeFile(file, `hub:\n  address: ${hubAddr}\ngateways:\n  - { id: gw, parent: hub, address: ${gwAddr} }\n`);
  const topoDir = join(dir, 'run');
  const args = [STRATA, 'topology', 'up', file, '--dir', topoDir, '--watch'];
  // sh waits for its child (no exec), as npm's script shell did: killing it leaves the top process orphaned.
  const proc: ChildProcess = viaParent
    ? spawn('sh', ['-c', `"${process.execPath}" ${args.map((a) => `"${a}"`).join(' ')}; true`], {
        stdio: ['ignore', 'pipe', 'pipe'],
      })
    : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout!.setEncoding('utf8').on('data', (c: string) => (output += c));
  proc.stderr!.setEncoding('utf8').on('data', (c: string) => (output += c));
  t.after(async () => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
    const state = readState(topoDir);
    for (const p of state ? processesTopDown(state) : [])
      if (p.record.pid && pidAlive(p.record.pid)) process.kill(p.record.pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  await until('the topology to come up', 90_000, () => /is up: hub, 1 gateways/.test(output) || proc.exitCode !== null);
  assert.match(output, /is up: hub, 1 gateways/);
  const nodes = processesTopDown(readState(topoDir)!).map((p) => p.record.pid!);
  assert.equal(nodes.length, 2);
  for (const pid of nodes) assert.ok(pidAlive(pid));
  return { proc, nodes, hubAddr, gwAddr, output: () => output };
}

async function assertAllGone(nodes: number[], hubAddr: string, gwAddr: string): Promise<void> {
  await until('every node to stop', 30_000, () => nodes.every((pid) => !pidAlive(pid)));
  for (const [host, port] of [
    [hubAddr, 443],
    [hubAddr, 8883],
    [hubAddr, 5671],
    [gwAddr, 443],
    [gwAddr, 8883],
    [gwAddr, 5671],
    [gwAddr, 9600],
  ] as const)
    assert.ok(await portFree(host, port), `${host}:${port} is still taken`);
}

test('SIGTERM to up --watch stops every node and frees its ports', { timeout: 150_000 }, async (t) => {
  const { proc, nodes, hubAddr, gwAddr, output } = await startTopology(t, false);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  proc.kill('SIGTERM');
  assert.equal(await exited, 0, output());
  assert.match(output(), /is down: 2 stopped/);
  await assertAllGone(nodes, hubAddr, gwAddr);
});

test('up --watch whose parent is killed (SIGKILL) stops every node and itself', { timeout: 150_000 }, async (t) => {
  const { proc, nodes, hubAddr, gwAddr, output } = await startTopology(t, true);
  const top = Number(readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim().split(' ')[0]);
  assert.ok(pidAlive(top), 'the top process runs under sh');
  proc.kill('SIGKILL');
  await until('the orphaned top process to end', 40_000, () => !pidAlive(top));
  await assertAllGone(nodes, hubAddr, gwAddr);
  assert.match(output(), /is down: 2 stopped/);
});
