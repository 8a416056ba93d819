import { createServer } from 'node:net';
import { UserError } from '../util/errors.ts';
import type { Topology } from './spec.ts';

/**
 * Before making anything: can every node bind its standard ports on its address? One clear
 * message for the usual causes (another topology or hub already there, an address this
 * machine does not have, ports below 1024 without the right to bind them) instead of a node's
 * log tail half-way through `up`.
 */

export const HUB_PORTS = [443, 8883, 5671];
export const GATEWAY_PORTS = [443, 8883, 5671, 9600];
/** Where every node serves HTTPS when 443 cannot be bound (not root, no CAP_NET_BIND_SERVICE). */
export const UNPRIVILEGED_HTTPS_PORT = 8443;
/** Set to 1, `up` behaves as if 443 could not be bound here (how the fallback is tested as root). */
export const UNPRIVILEGED_ENV = 'STRATA_UNPRIVILEGED';

function tryListen(host: string, port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(undefined)));
  });
}

/**
 * The HTTPS port of the topology: the file's `ports: https`, else 443 when this process may bind
 * it on the hub's address, else (EACCES, or STRATA_UNPRIVILEGED=1) 8443 with the reason to tell the user.
 */
export async function chooseHttpsPort(
  topology: Topology,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ port: number; fallback?: string }> {
  if (topology.ports) return { port: topology.ports.https };
  const forced = env[UNPRIVILEGED_ENV] === '1';
  if (!forced && (await tryListen(topology.hub.address, 443)) !== 'EACCES') return { port: 443 };
  return {
    port: UNPRIVILEGED_HTTPS_PORT,
    fallback: `port 443 needs root or CAP_NET_BIND_SERVICE${forced ? ` (${UNPRIVILEGED_ENV}=1)` : ''}: HTTPS on ${UNPRIVILEGED_HTTPS_PORT} instead (MQTT 8883 and AMQP 5671 as usual; ports: { https: N } in the file chooses)`,
  };
}

export async function checkPortsFree(topology: Topology, httpsPort = 443): Promise<void> {
  const withHttps = (ports: number[]) => ports.map((p) => (p === 443 ? httpsPort : p));
  const wanted = [
    ...withHttps(HUB_PORTS).map((port) => ({ who: 'the hub', host: topology.hub.address, port })),
    ...topology.gateways.flatMap((g) =>
      withHttps(GATEWAY_PORTS).map((port) => ({ who: `gateway ${g.id}`, host: g.address, port })),
    ),
  ];
  const results = await Promise.all(wanted.map(async (w) => ({ ...w, code: await tryListen(w.host, w.port) })));
  const failed = results.filter((r) => r.code !== undefined);
  if (failed.length === 0) return;
  const first = failed[0]!;
  const list =
    failed
      .slice(0, 6)
      .map((f) => `${f.host}:${f.port} (${f.who})`)
      .join(', ') + (failed.length > 6 ? ', ...' : '');
  if (first.code === 'EADDRINUSE') {
    throw new UserError(
      `already in use: ${list}`,
      'Is another topology or hub running there? Stop it (`strata topology down --dir DIR` with the directory it was started from) or change the addresses in the topology file',
    );
  }
  if (first.code === 'EADDRNOTAVAIL') {
    throw new UserError(
      `this machine has no interface with the address ${first.host} (${first.who})`,
      'On Linux every 127.x.y.z is loopback; elsewhere add it first, e.g. `sudo ifconfig lo0 alias ' + first.host + '`',
    );
  }
  if (first.code === 'EACCES') {
    throw new UserError(
      `not allowed to listen on ${list}`,
      'Ports below 1024 need root or the CAP_NET_BIND_SERVICE capability for node; set ports: { https: 8443 } in the topology file',
    );
  }
  throw new UserError(`cannot listen on ${list}: ${first.code}`);
}
