import type { FastifyInstance } from 'fastify';
import { type EdgeAgent, UnknownModuleError } from '../agent/agent.ts';
import { childLog } from '../util/log.ts';
import { healthToken, presentsHealthToken } from './health-access.ts';

/**
 * The agent's local routes on the gateway's HTTPS listener, for `strata edge logs` and
 * `strata edge restart` on this machine: only for the holder of health.token (the data
 * directory's owner), as the identities in /health are.
 *   GET  /agent/modules/{name}/logs?tail=N&follow=true   text/plain, one line per output line
 *   POST /agent/modules/{name}/restart
 */

const log = childLog('agent');

export function serveAgentRoutes(app: FastifyInstance, agent: EdgeAgent, tokenPath: string): void {
  const token = healthToken(tokenPath, (err) => log.warn({ err: err.message }, 'could not write health.token'));
  app.register(async (scoped) => {
    scoped.addHook('onRequest', async (req, reply) => {
      if (!presentsHealthToken(req.headers.authorization, token))
        return reply.code(401).send({ message: 'the gateway health token is required (strata edge logs reads it)' });
    });
    scoped.get('/agent/modules/:name/logs', async (req, reply) => {
      const { name } = req.params as { name: string };
      const q = req.query as { tail?: string; follow?: string };
      const tail = q.tail === undefined ? undefined : Number(q.tail);
      if (tail !== undefined && (!Number.isInteger(tail) || tail < 0))
        return reply.code(400).send({ message: `tail: ${JSON.stringify(q.tail)} is not a whole number` });
      const follow = q.follow === 'true' || q.follow === '1';
      const abort = new AbortController();
      let lines: AsyncIterable<string>;
      try {
        lines = await agent.logs(name, { tail, follow, signal: abort.signal });
      } catch (err) {
        if (err instanceof UnknownModuleError) return reply.code(404).send({ message: err.message });
        throw err;
      }
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      res.on('close', () => abort.abort());
      try {
        for await (const line of lines) {
          if (!res.write(`${line}\n`)) await new Promise((r) => res.once('drain', r));
        }
      } catch (err) {
        if (!abort.signal.aborted)
          log.warn({ module: name, err: (err as Error).message }, 'reading module logs failed');
      }
      res.end();
    });
    scoped.post('/agent/modules/:name/restart', async (req, reply) => {
      const { name } = req.params as { name: string };
      try {
        await agent.restartModule(name);
      } catch (err) {
        if (err instanceof UnknownModuleError) return reply.code(404).send({ message: err.message });
        throw err;
      }
      return { restarted: name };
    });
  });
}
