/**
 * Memory of idle connections at the hub: RSS (and V8 heap, separately) per idle authenticated
 * MQTT/TLS connection, and what an unauthenticated flood costs and leaves behind once it closes.
 *
 *   node --import tsx bench/idle-connections.ts [--connections 2000] [--rounds 3] [--no-floor]
 *     [--flood 5000] [--flood-sources 20] [--flood-rounds 3]
 *
 * Each round starts a fresh hub; the per-connection figures printed are medians over the rounds.
 * The floor is a bare Node TLS server (the MQTT listener's TLS options, certificate and key) that
 * answers CONNECT with a CONNACK, measured with the same clients: what Node and OpenSSL cost.
 * The hub runs as a real `strata hub start` child process; a small preload in it answers SIGUSR2
 * with process.memoryUsage() after two full GCs, so heap and RSS are read apart. Steps:
 * baseline, N authenticated idle MQTT connections (keep-alive 0), those closed, a flood of
 * TLS-handshaken sockets that never send CONNECT (from several loopback addresses, under the
 * per-address cap) plus as many bare TCP connections, and the flood closed; then more floods
 * (`--flood-rounds`), to tell a leak (grows each round) from memory the allocator keeps and
 * reuses (levels off). Prints one JSON line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { parseArgs } from 'node:util';
import { parseConnectionString } from '../src/identity/connection-string.ts';
import { createSasToken } from '../src/identity/sas.ts';
import { hubPkiPaths } from '../src/hub/tls.ts';
import { GATED_TLS_OPTIONS } from '../src/protocols/pre-auth.ts';
import { startHubProcess, type HubProcess } from '../test/helpers/hub.ts';
import {
  PROBE,
  idleDevice,
  inBatches,
  medians,
  memoryOf,
  mib,
  perConnection,
  round,
  sleep,
} from './connections-common.ts';

const { values: args } = parseArgs({
  options: {
    connections: { type: 'string', default: '2000' },
    flood: { type: 'string', default: '5000' },
    'flood-sources': { type: 'string', default: '20' },
    'flood-rounds': { type: 'string', default: '3' },
    rounds: { type: 'string', default: '3' },
    floor: { type: 'boolean', default: true },
  },
  allowNegative: true,
});
const N = Number(args.connections);
const FLOOD = Number(args.flood);
const FLOOD_SOURCES = Number(args['flood-sources']);
const FLOOD_ROUNDS = Math.max(1, Number(args['flood-rounds']));
const ROUNDS = Math.max(1, Number(args.rounds));
const FLOOR = args.floor;

function rest(
  host: string,
  ca: string,
  token: string,
  method: string,
  path: string,
  body: unknown,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = request(
      {
        host,
        port: 443,
        method,
        path: `${path}?api-version=2021-04-12`,
        ca,
        headers: { authorization: token, 'content-type': 'application/json', 'content-length': data.length },
      },
      (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/**
 * A bare Node TLS server with the hub MQTT listener's TLS options, certificate and key, answering
 * CONNECT with a CONNACK and doing nothing else: what Node and OpenSSL cost per connection, the
 * floor under the hub's own figure.
 */
const BARE_TLS_SERVER = `
const tls = require('node:tls');
const fs = require('node:fs');
const server = tls.createServer({
  cert: fs.readFileSync(process.env.STRATA_BENCH_CERT), key: fs.readFileSync(process.env.STRATA_BENCH_KEY),
  requestCert: true, rejectUnauthorized: false, ...JSON.parse(process.env.STRATA_BENCH_TLS_OPTIONS),
}, (socket) => {
  socket.setNoDelay(true);
  socket.on('error', () => undefined);
  socket.once('data', () => socket.write(Buffer.from([0x20, 2, 0, 0])));
});
server.listen(0, process.env.STRATA_BENCH_HOST, () => process.stdout.write('port ' + server.address().port + '\\n'));
`;

interface Round {
  hub: ReturnType<typeof perConnection>;
  bareTls?: ReturnType<typeof perConnection>;
  hubBaseline: ReturnType<typeof mib>;
  hubWithIdle: ReturnType<typeof mib>;
  hubIdleClosed: ReturnType<typeof mib>;
}

async function startBareTls(
  dir: string,
  probe: string,
  hub: HubProcess,
): Promise<{ proc: ChildProcess; port: number; memFile: string }> {
  const script = join(dir, 'bare-tls.cjs');
  writeFileSync(script, BARE_TLS_SERVER);
  const memFile = join(dir, 'bare-memory.json');
  const pki = hubPkiPaths(hub.dataDir);
  const proc = spawn(process.execPath, ['--expose-gc', '--require', probe, script], {
    env: {
      ...process.env,
      STRATA_BENCH_MEM_FILE: memFile,
      STRATA_BENCH_CERT: pki.serverCert,
      STRATA_BENCH_KEY: pki.serverKey,
      STRATA_BENCH_HOST: hub.address,
      STRATA_BENCH_TLS_OPTIONS: JSON.stringify(GATED_TLS_OPTIONS),
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.once('exit', (code) => reject(new Error(`the bare TLS server exited (${code})`)));
  });
  return { proc, port, memFile };
}

async function oneRound(
  dir: string,
  probe: string,
  index: number,
  withFlood: boolean,
): Promise<{ round: Round; flood?: Record<string, unknown> }> {
  const memFile = join(dir, `memory-${index}.json`);
  const hub = await startHubProcess({
    nodeArgs: ['--expose-gc', '--require', probe],
    env: { STRATA_BENCH_MEM_FILE: memFile, STRATA_LOG_LEVEL: 'error' },
  });
  let bare: Awaited<ReturnType<typeof startBareTls>> | undefined;
  try {
    const cs = parseConnectionString(hub.connectionString);
    const policyToken = createSasToken(
      hub.hostname,
      cs.SharedAccessKey,
      Math.floor(Date.now() / 1000) + 3600,
      cs.SharedAccessKeyName,
    );
    const runId = randomBytes(3).toString('hex');
    const devices = Array.from({ length: N }, (_, i) => ({
      id: `idle-${runId}-${i}`,
      key: randomBytes(32).toString('base64'),
    }));
    for (let i = 0; i < devices.length; i += 100) {
      const chunk = devices.slice(i, i + 100).map((d) => ({
        id: d.id,
        importMode: 'create',
        status: 'enabled',
        authentication: {
          type: 'sas',
          symmetricKey: { primaryKey: d.key, secondaryKey: randomBytes(32).toString('base64') },
        },
      }));
      const r = await rest(hub.address, hub.caPem, policyToken, 'POST', '/devices', chunk);
      if (r.status !== 200 || !JSON.parse(r.body).isSuccessful)
        throw new Error(`bulk create failed: ${r.status} ${r.body}`);
    }
    const device = (i: number) => idleDevice(hub.address, 8883, hub.caPem, devices[i]!.id, devices[i]!.key);
    // Warm up TLS and the engine with a few connections first, so the baseline holds the one-off costs.
    for (const s of await inBatches(20, 20, device)) s.destroy();
    const base = await memoryOf(hub.proc, memFile);
    const idle = await inBatches(N, 100, device);
    const withIdle = await memoryOf(hub.proc, memFile);
    for (const s of idle) s.destroy();
    const idleClosed = await memoryOf(hub.proc, memFile);
    const result: Round = {
      hub: perConnection(base, withIdle, N),
      hubBaseline: mib(base),
      hubWithIdle: mib(withIdle),
      hubIdleClosed: mib(idleClosed),
    };

    if (FLOOR) {
      // The same clients (TLS, CONNECT with a token) against the bare server, while the hub idles.
      bare = await startBareTls(dir, probe, hub);
      const b = bare;
      const bareDevice = (i: number) => idleDevice(hub.address, b.port, hub.caPem, devices[i]!.id, devices[i]!.key);
      for (const s of await inBatches(20, 20, bareDevice)) s.destroy();
      const bareBase = await memoryOf(b.proc, b.memFile);
      const bareIdle = await inBatches(N, 100, bareDevice);
      const bareWith = await memoryOf(b.proc, b.memFile);
      for (const s of bareIdle) s.destroy();
      result.bareTls = perConnection(bareBase, bareWith, N);
    }
    if (!withFlood) return { round: result };

    // The flood: half TLS handshakes that never send CONNECT, half bare TCP; spread over addresses under the caps.
    const sources = Array.from(
      { length: FLOOD_SOURCES },
      () => `127.${randomInt(2, 251)}.${randomInt(2, 251)}.${randomInt(2, 251)}`,
    );
    const floodOnce = () =>
      inBatches(FLOOD, 250, (i) => {
        const localAddress = sources[i % sources.length]!;
        return new Promise<Socket>((resolve) => {
          const s: Socket =
            i % 2
              ? netConnect({ host: hub.address, port: i % 4 === 1 ? 8883 : 5671, localAddress })
              : tlsConnect({ host: hub.address, port: 8883, ca: hub.caPem, localAddress } as never);
          s.on('error', () => resolve(s));
          s.once(i % 2 ? 'connect' : 'secureConnect', () => resolve(s));
          s.resume();
        });
      });
    const flood = await floodOnce();
    const during = await memoryOf(hub.proc, memFile);
    const floodHeld = flood.filter((s) => !s.destroyed).length;
    for (const s of flood) s.destroy();
    await sleep(3000);
    const afterFlood = await memoryOf(hub.proc, memFile);
    // More floods the same size: memory kept after the first is reused, not added to (no leak).
    const afterEachFlood = [mib(afterFlood)];
    for (let r = 1; r < FLOOD_ROUNDS; r++) {
      for (const s of await floodOnce()) s.destroy();
      await sleep(3000);
      afterEachFlood.push(mib(await memoryOf(hub.proc, memFile)));
    }
    return {
      round: result,
      flood: {
        sockets: FLOOD,
        sources: FLOOD_SOURCES,
        openAtMeasurement: floodHeld,
        baseline: mib(base),
        duringFlood: mib(during),
        afterFlood: mib(afterFlood),
        afterFloodOverBaselineMiB: round((afterFlood.rss - base.rss) / 2 ** 20),
        afterEachFlood,
      },
    };
  } finally {
    bare?.proc.kill();
    await hub.stop();
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-bench-idle-'));
  const probe = join(dir, 'probe.cjs');
  writeFileSync(probe, PROBE);
  try {
    const rounds: Round[] = [];
    let flood: Record<string, unknown> | undefined;
    for (let r = 0; r < ROUNDS; r++) {
      // The flood (once, in the last round) comes after that round's idle figures.
      const out = await oneRound(dir, probe, r, FLOOD > 0 && r === ROUNDS - 1);
      rounds.push(out.round);
      flood ??= out.flood;
      process.stderr.write(
        `round ${r + 1}/${ROUNDS}: hub ${out.round.hub.rssKiB} KiB, bare TLS ${out.round.bareTls?.rssKiB ?? '-'} KiB per idle connection\n`,
      );
    }
    process.stdout.write(
      `${JSON.stringify({
        bench: 'idle-connections',
        connections: N,
        rounds: ROUNDS,
        perIdleAuthenticatedMqttTls: medians(rounds.map((r) => r.hub)),
        ...(FLOOR ? { perIdleBareNodeTls: medians(rounds.map((r) => r.bareTls!)) } : {}),
        eachRound: rounds,
        ...(flood ? { flood } : {}),
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
