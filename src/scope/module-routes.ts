import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { EDGE_SYSTEM_MODULES, moduleIdProblem } from '../identity/device-id.ts';
import { ScopeError, formatAuthChain, validateAuthChain, type ScopeNode, type ScopeView } from '../identity/scope.ts';
import { HubError, badRequest } from '../model/errors.ts';
import {
  MANAGED_BY_EDGE,
  type IdentitySource,
  type ModuleIdentityBackend,
  type ModuleOnBehalfOfJson,
} from './contract.ts';
import { chainInvalid, notInScope, scopeRefusal } from './refusals.ts';

/**
 * The scope API's module routes (contract.ts): an edge device's module identities created,
 * read, listed and deleted on its behalf. Each node checks the caller and the chain against
 * what it knows, then hands the request to its backend: the hub's registry writes it, a
 * gateway relays it to its own parent, so the hub decides and the answer is never a cache's.
 */

export interface ModuleRouteParts {
  source: IdentitySource;
  view: ScopeView;
  log: Logger;
  backend: ModuleIdentityBackend;
  /** The plugin's proof that the caller is `{edge}/$edgeHub` of a usable edge device. */
  edgeHubCaller(req: FastifyRequest): Promise<{ edge: ScopeNode }>;
  bodyOf(req: FastifyRequest): Record<string, unknown>;
  chainOf(body: Record<string, unknown>): string[];
}

export function moduleRoutes(app: FastifyInstance, p: ModuleRouteParts): void {
  const { source, view, log, backend } = p;

  /** Why a refusal happened, logged where it is decided (the error handler logs every answer too). */
  const refuse = (actor: string, chain: readonly string[], err: HubError): HubError => {
    log.warn(
      { actor, authChain: formatAuthChain(chain), status: err.status, code: err.code },
      `module identity request refused: ${err.message}`,
    );
    return err;
  };

  /**
   * The target edge device's chain as this node knows it, from the target up to the caller.
   * The target must be the caller or an edge device in its scope, enabled.
   */
  async function targetChain(
    req: FastifyRequest,
  ): Promise<{ actor: string; body: Record<string, unknown>; chain: string[] }> {
    const { edge } = await p.edgeHubCaller(req);
    const body = p.bodyOf(req);
    const claimed = p.chainOf(body);
    const actor = edge.deviceId;
    const targetId = claimed[0]!;
    if (targetId.includes('/'))
      throw refuse(
        actor,
        claimed,
        badRequest(
          `authChain must start with the edge device whose modules are meant, not with the module ${targetId}`,
        ),
      );
    if (claimed[claimed.length - 1] !== actor)
      throw refuse(
        actor,
        claimed,
        chainInvalid(`the auth chain ${formatAuthChain(claimed)} must end with the calling edge device ${actor}`),
      );
    // A gateway that has not heard of the target yet (created a moment ago) asks its parent first.
    if (!source.getDevice(targetId) && source.fetchUpstream) {
      try {
        await source.fetchUpstream({ deviceId: targetId }, claimed);
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        log.warn({ target: targetId, err: why }, 'could not ask the parent about the target edge device');
        throw new HubError(502, 'ParentUnreachable', `device ${targetId} is not known here, and ${why}`);
      }
      if (!source.getDevice(targetId))
        throw refuse(
          actor,
          claimed,
          notInScope(
            `device ${targetId} is not in the scope of edge device ${actor}, as far as this gateway and its parent know`,
          ),
        );
    }
    let chain: string[];
    try {
      chain = validateAuthChain(view, claimed, actor, { deviceId: targetId });
    } catch (err) {
      if (!(err instanceof ScopeError)) throw err;
      const target = view.device(targetId);
      if (err.code === 'void' && target?.status === 'disabled') throw refuse(actor, claimed, disabled(targetId));
      throw refuse(actor, claimed, scopeRefusal(err));
    }
    const target = view.device(targetId)!;
    if (!target.isEdge)
      throw refuse(
        actor,
        chain,
        new HubError(
          400,
          'DeviceNotEdge',
          `device ${targetId} is not an IoT Edge device: module identities are created on behalf of edge devices only`,
        ),
      );
    if (target.status === 'disabled') throw refuse(actor, chain, disabled(targetId));
    return { actor, body, chain };
  }

  const disabled = (id: string) =>
    new HubError(
      403,
      'DeviceDisabled',
      `edge device ${id} is disabled, so no module identities are managed on its behalf`,
    );

  /** A module id from the body: valid, and (for writes) not one of the runtime's own. */
  function moduleIdOf(actor: string, chain: string[], raw: unknown, field: string, write: boolean): string {
    const problem = moduleIdProblem(raw);
    if (problem) throw refuse(actor, chain, badRequest(`${field}: ${problem}`));
    const id = raw as string;
    if (write && EDGE_SYSTEM_MODULES.includes(id))
      throw refuse(
        actor,
        chain,
        badRequest(
          `${field}: ${id} is a system module of the edge runtime of ${chain[0]}; it cannot be created, changed or deleted on its behalf`,
        ),
      );
    return id;
  }

  const ifMatchOf = (req: FastifyRequest): string | undefined => {
    const h = req.headers['if-match'];
    const v = Array.isArray(h) ? h[0] : h;
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };

  app.put('/devices/:id/modules/:mid/putModuleOnBehalfOf', async (req): Promise<ModuleOnBehalfOfJson> => {
    const { actor, body, chain } = await targetChain(req);
    const module = body.module;
    if (typeof module !== 'object' || module === null || Array.isArray(module))
      throw refuse(actor, chain, badRequest('module is missing: the body must carry {authChain, module}'));
    const m = module as Record<string, unknown>;
    if (m.deviceId !== chain[0])
      throw refuse(
        actor,
        chain,
        badRequest(
          `module.deviceId (${String(m.deviceId)}) does not match the target edge device of the auth chain (${chain[0]})`,
        ),
      );
    const moduleId = moduleIdOf(actor, chain, m.moduleId, 'module.moduleId', true);
    const ifMatch = ifMatchOf(req);
    // A create without managedBy is the edge runtime's, as IoT Edge marks the modules it creates.
    const written = ifMatch === undefined && m.managedBy === undefined ? { ...m, managedBy: MANAGED_BY_EDGE } : m;
    const result = await backend.put(chain, written, ifMatch);
    log.info(
      { actor, authChain: formatAuthChain(chain), module: `${chain[0]}/${moduleId}`, update: ifMatch !== undefined },
      'module identity written on behalf of an edge device',
    );
    return result;
  });

  app.post('/devices/:id/modules/:mid/getModuleOnBehalfOf', async (req): Promise<ModuleOnBehalfOfJson> => {
    const { actor, body, chain } = await targetChain(req);
    const moduleId = moduleIdOf(actor, chain, body.targetModuleId, 'targetModuleId', false);
    return backend.get(chain, moduleId);
  });

  app.post('/devices/:id/modules/:mid/getModulesOnTargetDevice', async (req): Promise<ModuleOnBehalfOfJson[]> => {
    const { chain } = await targetChain(req);
    return backend.list(chain);
  });

  app.post('/devices/:id/modules/:mid/deleteModuleOnBehalfOf', async (req, reply) => {
    const { actor, body, chain } = await targetChain(req);
    const moduleId = moduleIdOf(actor, chain, body.moduleId, 'moduleId', true);
    await backend.delete(chain, moduleId, ifMatchOf(req));
    log.info(
      { actor, authChain: formatAuthChain(chain), module: `${chain[0]}/${moduleId}` },
      'module identity deleted on behalf of an edge device',
    );
    return reply.code(204).send();
  });
}
