import { type ChildProcess, spawn } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pidAlive } from '../../src/topology/processes.ts';

/**
 * A fresh copy of the project in a temp directory, as a newcomer's clone, with its own
 * `examples/topology.yaml`, and `npm start` run there: what the first-hour tests drive.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Copies the project into `parent/strata` (node_modules linked) with `topologyYaml` as the demo's file. */
export function copyProject(parent: string, topologyYaml: string): string {
  const copy = join(parent, 'strata');
  mkdirSync(copy);
  for (const f of ['package.json', 'tsconfig.json', 'tsconfig.build.json', 'bin', 'scripts', 'src', 'examples'])
    cpSync(join(ROOT, f), join(copy, f), { recursive: true });
  symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
  writeFileSync(join(copy, 'examples', 'topology.yaml'), topologyYaml);
  return copy;
}

/**
 * Every live process (not this one) whose command line contains `text`, or whose working
 * directory is inside it (`node examples/leaf-device.mjs` run in the copy names no path of it).
 */
export function processesMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cwd = readlinkSync(`/proc/${name}/cwd`);
      const mentions = readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(text) || cwd.startsWith(text);
      if (mentions && pidAlive(Number(name))) pids.push(Number(name));
    } catch {
      // gone already
    }
  }
  return pids;
}

export function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/** A child whose stdout and stderr are collected, and a wait for a line of it. */
export interface Watched {
  proc: ChildProcess;
  output(): string;
  waitFor(pattern: RegExp, ms: number): Promise<RegExpMatchArray>;
}

export function watched(proc: ChildProcess): Watched {
  let text = '';
  proc.stdout?.setEncoding('utf8').on('data', (c: string) => (text += c));
  proc.stderr?.setEncoding('utf8').on('data', (c: string) => (text += c));
  return {
    proc,
    output: () => text,
    async waitFor(pattern, ms) {
      const deadline = Date.now() + ms;
      for (;;) {
        const m = pattern.exec(text);
        if (m) return m;
        if (proc.exitCode !== null || proc.signalCode !== null || Date.now() > deadline)
          throw new Error(
            `no ${pattern} (${proc.exitCode !== null ? `exited ${proc.exitCode}` : 'timed out'}):\n${text}`,
          );
        await new Promise((r) => setTimeout(r, 200));
      }
    },
  };
}

/** `npm start` in the copy. */
export function npmStart(copy: string, env: NodeJS.ProcessEnv = process.env): Watched {
  return watched(spawn('npm', ['start'], { cwd: copy, stdio: ['ignore', 'pipe', 'pipe'], env }));
}

/** `sh -c script` in the copy, in its own process group (so the group can be signalled). */
export function shell(copy: string, script: string, env: NodeJS.ProcessEnv = process.env): Watched {
  return watched(spawn('sh', ['-c', script], { cwd: copy, stdio: ['ignore', 'pipe', 'pipe'], env, detached: true }));
}
