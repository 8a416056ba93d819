/**
 * Connections at one gateway: N leaves, each its own identity under the gateway, connect over
 * MQTT/TLS with SAS tokens in storms of S at once (from several loopback source addresses, as
 * devices on a plant network would be), then stay idle. Prints the time each storm took, every
 * refused or failed connection with its reason, and the gateway's memory per idle connection.
 *
 *   node --import tsx bench/gateway-connections.ts [--connections 10000] [--storm 1000]
 *     [--sources 20] [--rounds 1]
 *
 * The hub and the gateway run as real `strata hub start` / `strata edge start` child processes;
 * the gateway gets MaxConnectedClients a little above N, so a refusal is a bug, not the limit. A
 * small preload in the gateway answers SIGUSR2 with its memory after two full GCs
 * (connections-common.ts). The clients share the machine with the gateway, so the storm times
 * are an upper bound; the gateway's CPU time per connection is not stretched by other load.
 * Prints one JSON line; with several rounds, per-connection figures are medians.
 */
import { randomInt } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { parseArgs } from 'node:util';
import { createLeavesBulk, metricValue, setupEdge, startGatewayProcess } from '../test/helpers/edge.ts';
import { startHubProcess } from '../test/helpers/hub.ts';
import { chainAddresses } from '../test/helpers/nested.ts';
import { cpuMsOf } from './common.ts';
import { PROBE, idleDevice, medians, memoryOf, mib, perConnection, round, sleep } from './connections-common.ts';

const { values: args } = parseArgs({
  options: {
    connections: { type: 'string', default: '10000' },
    storm: { type: 'string', default: '1000' },
    sources: { type: 'string', default: '20' },
    rounds: { type: 'string', default: '1' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  process.stdout.write(
    'usage: node --import tsx bench/gateway-connections.ts [--connections 10000] [--storm 1000] [--sources 20] [--rounds 1]\n',
  );
  process.exit(0);
}
const N = Number(args.connections);
const STORM = Math.max(1, Number(args.storm));
const SOURCES = Math.max(1, Number(args.sources));
const ROUNDS = Math.max(1, Number(args.rounds));
if (!Number.isInteger(N) || N < 1)
  throw new Error(`--connections must be a whole number of 1 or more, got ${args.connections}`);

interface Round {
  perIdleConnection: ReturnType<typeof perConnection>;
  connected: number;
  stormMs: number[];
  connectAllMs: number;
  /** The gateway's CPU time (user + system) over the storms, per connection: unlike the storm times, not stretched by other load on the machine. */
  gatewayCpuMsPerConnection: number;
  failures: Record<string, number>;
  connectedClientsMetric?: number;
  gatewayBaseline: ReturnType<typeof mib>;
  gatewayWithIdle: ReturnType<typeof mib>;
}

async function oneRound(dir: string, probe: string, index: number): Promise<Round> {
  const [hubAddr, gwAddr] = chainAddresses();
  const hub = await startHubProcess({ address: hubAddr, env: { STRATA_LOG_LEVEL: 'error' } });
  const edge = await setupEdge(hub, {
    gatewayId: `conn-gw-${index}`,
    address: gwAddr,
    strata: `max_connected_clients = ${N + 100}`,
  });
  try {
    const { ids, key } = await createLeavesBulk(edge, `conn-${index}-`, N);
    const memFile = join(dir, `gateway-memory-${index}.json`);
    const gw = await startGatewayProcess({
      configPath: edge.configPath,
      dataDir: edge.dataDir,
      address: gwAddr,
      nodeArgs: ['--expose-gc', '--require', probe],
      env: { STRATA_BENCH_MEM_FILE: memFile, STRATA_LOG_LEVEL: 'error' },
    });
    const sockets: TLSSocket[] = [];
    try {
      const sources = Array.from(
        { length: SOURCES },
        () => `127.${randomInt(2, 251)}.${randomInt(2, 251)}.${randomInt(2, 251)}`,
      );
      const leaf = (i: number) =>
        idleDevice(gwAddr, 8883, edge.rootPem, ids[i]!, key, {
          hubHostname: hub.hostname,
          localAddress: sources[i % SOURCES],
        });
      // Warm-up: the last ids, which the gateway knows only once its scope sync has listed them all.
      for (let i = N - 1; i >= Math.max(0, N - 20); i--) (await leaf(i)).destroy();
      await sleep(1000);
      const base = await memoryOf(gw.proc, memFile);
      const stormMs: number[] = [];
      const failures: Record<string, number> = {};
      const cpuBefore = cpuMsOf(gw.proc.pid!);
      const began = performance.now();
      for (let from = 0; from < N; from += STORM) {
        const t0 = performance.now();
        const settled = await Promise.allSettled(
          Array.from({ length: Math.min(STORM, N - from) }, (_, j) => leaf(from + j)),
        );
        stormMs.push(Math.round(performance.now() - t0));
        for (const s of settled) {
          if (s.status === 'fulfilled') sockets.push(s.value);
          else {
            const why = String((s.reason as Error).message).replace(/^[^:]*: /, '');
            failures[why] = (failures[why] ?? 0) + 1;
          }
        }
      }
      const connectAllMs = Math.round(performance.now() - began);
      const gatewayCpuMsPerConnection = round((cpuMsOf(gw.proc.pid!) - cpuBefore) / Math.max(1, N));
      const withIdle = await memoryOf(gw.proc, memFile);
      const connectedClientsMetric = metricValue(await gw.metrics(), 'edgehub_connected_clients');
      return {
        perIdleConnection: perConnection(base, withIdle, Math.max(1, sockets.length)),
        connected: sockets.length,
        stormMs,
        connectAllMs,
        gatewayCpuMsPerConnection,
        failures,
        connectedClientsMetric,
        gatewayBaseline: mib(base),
        gatewayWithIdle: mib(withIdle),
      };
    } finally {
      for (const s of sockets) s.destroy();
      await gw.stop();
    }
  } finally {
    await edge.cleanup();
    await hub.stop();
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-bench-gwconn-'));
  const probe = join(dir, 'probe.cjs');
  writeFileSync(probe, PROBE);
  try {
    const rounds: Round[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const out = await oneRound(dir, probe, r);
      rounds.push(out);
      process.stderr.write(
        `round ${r + 1}/${ROUNDS}: ${out.connected}/${N} connected in ${out.connectAllMs} ms (storms of ${STORM}: ${out.stormMs.join(', ')} ms), ${out.perIdleConnection.rssKiB} KiB RSS per idle connection, ${out.gatewayCpuMsPerConnection} ms of gateway CPU per connection\n`,
      );
    }
    const sorted = rounds.map((r) => r.connectAllMs).sort((a, b) => a - b);
    process.stdout.write(
      `${JSON.stringify({
        bench: 'gateway-connections',
        connections: N,
        storm: STORM,
        sources: SOURCES,
        rounds: ROUNDS,
        perIdleConnection: medians(rounds.map((r) => r.perIdleConnection)),
        connectAllMsMedian: sorted[Math.floor((sorted.length - 1) / 2)],
        perConnectionConnectMs: round((sorted[Math.floor((sorted.length - 1) / 2)] ?? 0) / N),
        gatewayCpuMsPerConnection: medians(rounds.map((r) => ({ v: r.gatewayCpuMsPerConnection }))).v,
        refusedOrFailed: rounds.reduce((n, r) => n + Object.values(r.failures).reduce((a, b) => a + b, 0), 0),
        eachRound: rounds,
      })}\n`,
    );
  } finally {
    if (!process.env.STRATA_BENCH_SNAPSHOTS) rmSync(dir, { recursive: true, force: true });
    else process.stderr.write(`heap snapshots kept in ${dir}\n`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
