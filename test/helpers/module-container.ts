import { execFileSync, spawnSync } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { nodeMounts, writeEngineConf } from './podman.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Runs a Node module script in a real container (Podman, its own storage under a temp dir), the
 * way a container module runs under the agent: its workload socket bound at IoT Edge's path, the
 * environment passed with -e. The image is an empty root with a static shell; this machine's
 * node binary, its shared libraries and the SDK packages are mounted read-only, so no image with
 * Node needs building.
 */

export function containerMissing(): string | undefined {
  if (process.platform !== 'linux') return 'containers need Linux';
  for (const cmd of ['podman', 'runc', 'busybox'])
    if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0)
      return `${cmd} is not installed (apt-get install podman runc busybox-static)`;
  return undefined;
}

/** The agent tests' module pipeline, as containers: a sensor (its SENSOR_LABEL `label`) and a filter. */
export function pipelineContainers(image: string, mounts: string[], label: string): Record<string, unknown> {
  const script = (name: string) => fileURLToPath(new URL(`../fixtures/agent-modules/${name}.cjs`, import.meta.url));
  return {
    sensor: nodeContainerModule(image, mounts, script('sensor'), { SENSOR_LABEL: label }),
    filter: nodeContainerModule(image, mounts, script('filter')),
  };
}

/**
 * A `docker` module of a deployment that runs `script` with this machine's node in `image`
 * (given `mounts` from podman.ts nodeMounts), on the host network, under `always`.
 */
export function nodeContainerModule(
  image: string,
  mounts: string[],
  script: string,
  env: Record<string, string> = {},
): Record<string, unknown> {
  const createOptions = JSON.stringify({
    Cmd: ['/usr/bin/node', '/app/module.cjs'],
    HostConfig: { Binds: [...mounts, `${script}:/app/module.cjs:ro`], NetworkMode: 'host' },
  });
  return {
    version: '1.0',
    type: 'docker',
    status: 'running',
    restartPolicy: 'always',
    imagePullPolicy: 'never',
    settings: { image, createOptions },
    env: Object.fromEntries(Object.entries(env).map(([k, v]) => [k, { value: v }])),
  };
}

export interface ModuleContainers {
  /** The podman command and arguments that run `script args` in a container with `env` and `binds`. */
  command(o: { script: string; args: string[]; env: Record<string, string>; binds: string[] }): {
    file: string;
    args: string[];
    env: Record<string, string>;
  };
  cleanup(): Promise<void>;
}

const IMAGE = 'localhost/strata-workload-test:1';

export async function moduleContainers(): Promise<ModuleContainers> {
  const dir = await mkdtemp(join(tmpdir(), 'wlc-'));
  const env = { ...process.env, CONTAINERS_CONF: await writeEngineConf(dir) } as Record<string, string>;
  const podman = ['--root', join(dir, 'storage'), '--runroot', join(dir, 'run')];
  const rootfs = join(dir, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await mkdir(join(rootfs, 'tmp'));
  const busybox = execFileSync('sh', ['-c', 'command -v busybox'], { encoding: 'utf8' }).trim();
  await copyFile(busybox, join(rootfs, 'bin', 'sh'));
  execFileSync('tar', ['-C', rootfs, '-cf', join(dir, 'rootfs.tar'), '.']);
  execFileSync('podman', [...podman, 'import', join(dir, 'rootfs.tar'), IMAGE], { env, stdio: 'ignore' });

  const mounts = await nodeMounts();

  return {
    command(o) {
      // No --rm: its removal races the container's own cleanup process in this Podman, and a
      // run stuck there holds the container's lock; cleanup() removes every container instead.
      const args = [...podman, 'run', '-i', '--network', 'host'];
      for (const m of [...mounts, `${o.script}:/app/module.cjs:ro`, ...o.binds]) args.push('-v', m);
      for (const [k, v] of Object.entries(o.env)) args.push('-e', `${k}=${v}`);
      args.push(IMAGE, '/usr/bin/node', '/app/module.cjs', ...o.args);
      return { file: 'podman', args, env };
    },
    async cleanup() {
      spawnSync('podman', [...podman, 'rm', '--all', '--force'], { env, stdio: 'ignore' });
      spawnSync('podman', [...podman, 'rmi', '--all', '--force'], { env, stdio: 'ignore' });
      // A container's cleanup process may still be finishing with its files.
      await rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 }).catch((err) =>
        console.error(`leaving ${dir}: ${err}`),
      );
    },
  };
}
