import type { Logger } from 'pino';
import { EDGE_SYSTEM_MODULES, moduleIdProblem } from '../identity/device-id.ts';
import { childLog } from '../util/log.ts';
import { MANAGED_BY_EDGE, scopePaths, type ModuleOnBehalfOfJson } from './contract.ts';
import { ScopeParentClient, ScopeSyncError, type ScopeParentOptions } from './parent-client.ts';

/**
 * An edge device's module identities, created at the hub through the parent chain on its own
 * behalf (as nested IoT Edge's agent does through its edge hub): the module routes of the
 * parent's scope API, signed as this gateway's `$edgeHub`. Each gateway above relays the
 * request; the hub writes it and generates the keys.
 */

export interface ModuleIdentityKeys {
  moduleId: string;
  generationId: string;
  primaryKey: string;
  secondaryKey: string;
}

/**
 * `unreachable`: the parent (or one above it) could not be reached; try again later.
 * `refused`: a parent said no; `reason` is its answer, `status` and `code` its HTTP status and code.
 */
export class ModuleIdentityError extends Error {
  constructor(
    message: string,
    readonly kind: 'unreachable' | 'refused',
    readonly status?: number,
    readonly code?: string,
    readonly reason?: string,
  ) {
    super(message);
    this.name = 'ModuleIdentityError';
  }
}

export interface ParentModuleIdentitiesOptions {
  /**
   * The edge device whose modules are meant: this gateway's own by default, or an edge device
   * in its scope (its chain is then claimed as `target;this`, and each parent fills in the middle).
   */
  targetDeviceId?: string;
  log?: Logger;
}

export class ParentModuleIdentities {
  private readonly client: ScopeParentClient;
  private readonly ownClient: boolean;
  private readonly target: string;
  private readonly chain: string;
  private readonly paths: ReturnType<typeof scopePaths>;
  private readonly log: Logger;

  /**
   * From the client a gateway's scope sync already uses (`ScopeSync.parentClient`), or from the
   * same options a ScopeSync takes.
   */
  constructor(parent: ScopeParentClient | ScopeParentOptions, o: ParentModuleIdentitiesOptions = {}) {
    this.ownClient = !(parent instanceof ScopeParentClient);
    this.client = parent instanceof ScopeParentClient ? parent : new ScopeParentClient(parent);
    const self = this.client.edgeDeviceId;
    this.target = o.targetDeviceId ?? self;
    this.chain = this.target === self ? self : `${this.target};${self}`;
    this.paths = scopePaths(self);
    this.log = o.log ?? childLog('module-identities');
  }

  /** Closes the connections to the parent, when this object opened them (not a shared client's). */
  close(): void {
    if (this.ownClient) this.client.close();
  }

  /** Creates the module's identity if it is absent; returns its keys (unchanged if it existed). */
  async ensure(moduleId: string): Promise<ModuleIdentityKeys> {
    this.checkId(moduleId, true);
    const existing = await this.get(moduleId);
    if (existing) return keysOf(existing);
    let created: ModuleOnBehalfOfJson;
    try {
      created = await this.call<ModuleOnBehalfOfJson>(
        'PUT',
        this.paths.putModule,
        {
          authChain: this.chain,
          module: { deviceId: this.target, moduleId, managedBy: MANAGED_BY_EDGE },
        },
        `creating module identity ${this.target}/${moduleId}`,
      );
    } catch (err) {
      // Created meanwhile by someone else: theirs stands.
      if (err instanceof ModuleIdentityError && err.status === 409) {
        const now = await this.get(moduleId);
        if (now) return keysOf(now);
      }
      throw err;
    }
    this.log.info(
      { module: `${this.target}/${moduleId}`, generationId: created.generationId },
      'module identity created at the hub',
    );
    return keysOf(created);
  }

  /** Deletes the module's identity; one that does not exist is fine. */
  async remove(moduleId: string): Promise<void> {
    this.checkId(moduleId, true);
    try {
      await this.call<void>(
        'POST',
        this.paths.deleteModule,
        { authChain: this.chain, moduleId },
        `deleting module identity ${this.target}/${moduleId}`,
      );
      this.log.info({ module: `${this.target}/${moduleId}` }, 'module identity deleted at the hub');
    } catch (err) {
      if (err instanceof ModuleIdentityError && err.status === 404 && err.code === 'ModuleNotFound') return;
      throw err;
    }
  }

  /** The module ids of the edge device, its system modules excluded. */
  async list(): Promise<string[]> {
    return (await this.listModules()).map((m) => m.moduleId).filter((id) => !EDGE_SYSTEM_MODULES.includes(id));
  }

  /** Every module identity of the edge device, system modules included, as the hub has them. */
  async listModules(): Promise<ModuleOnBehalfOfJson[]> {
    const all = await this.call<ModuleOnBehalfOfJson[]>(
      'POST',
      this.paths.listModules,
      { authChain: this.chain },
      `listing the module identities of ${this.target}`,
    );
    if (!Array.isArray(all))
      throw new ModuleIdentityError(
        `the parent ${this.client.where()} answered the module listing with something that is not a list`,
        'refused',
      );
    return all;
  }

  /** One module identity as the hub has it, or undefined when it does not exist. */
  async get(moduleId: string): Promise<ModuleOnBehalfOfJson | undefined> {
    this.checkId(moduleId, false);
    try {
      return await this.call<ModuleOnBehalfOfJson>(
        'POST',
        this.paths.getModule,
        { authChain: this.chain, targetModuleId: moduleId },
        `reading module identity ${this.target}/${moduleId}`,
      );
    } catch (err) {
      if (err instanceof ModuleIdentityError && err.status === 404 && err.code === 'ModuleNotFound') return undefined;
      throw err;
    }
  }

  /**
   * Replaces an existing module identity (e.g. new keys, or another managedBy); fields left out
   * are kept. `etag` defaults to `*` (whatever the current version is).
   */
  async update(
    moduleId: string,
    change: { managedBy?: string; primaryKey?: string; secondaryKey?: string },
    etag = '*',
  ): Promise<ModuleOnBehalfOfJson> {
    this.checkId(moduleId, true);
    const keys = change.primaryKey !== undefined || change.secondaryKey !== undefined;
    return this.call<ModuleOnBehalfOfJson>(
      'PUT',
      this.paths.putModule,
      {
        authChain: this.chain,
        module: {
          deviceId: this.target,
          moduleId,
          ...(change.managedBy !== undefined ? { managedBy: change.managedBy } : {}),
          ...(keys
            ? {
                authentication: {
                  type: 'sas',
                  symmetricKey: { primaryKey: change.primaryKey ?? null, secondaryKey: change.secondaryKey ?? null },
                },
              }
            : {}),
        },
      },
      `updating module identity ${this.target}/${moduleId}`,
      etag,
    );
  }

  /** A module id this side can refuse itself, before asking anyone. */
  private checkId(moduleId: string, write: boolean): void {
    const problem = moduleIdProblem(moduleId);
    if (problem)
      throw new ModuleIdentityError(
        `${problem}: choose a valid module name`,
        'refused',
        400,
        'ArgumentInvalid',
        problem,
      );
    if (write && EDGE_SYSTEM_MODULES.includes(moduleId))
      throw new ModuleIdentityError(
        `${moduleId} is a system module of the edge runtime; its identity is the hub's to manage`,
        'refused',
        400,
        'ArgumentInvalid',
      );
  }

  private async call<T>(
    method: 'POST' | 'PUT',
    path: string,
    body: unknown,
    what: string,
    ifMatch?: string,
  ): Promise<T> {
    try {
      return await this.client.request<T>(method, path, body, { what, ...(ifMatch !== undefined ? { ifMatch } : {}) });
    } catch (err) {
      if (!(err instanceof ScopeSyncError)) throw err;
      if (
        err.status === undefined ||
        err.code === 'ParentUnreachable' ||
        err.status === 502 ||
        err.status === 503 ||
        err.status === 504
      ) {
        throw new ModuleIdentityError(
          `${what} failed: ${err.message}; the module identity cannot be managed until the parent chain is reachable again`,
          'unreachable',
          err.status,
          err.code,
          err.reason,
        );
      }
      const hint = err.code ? REFUSAL_HINTS[err.code] : undefined;
      throw new ModuleIdentityError(
        hint ? `${err.message}: ${hint}` : err.message,
        'refused',
        err.status,
        err.code,
        err.reason,
      );
    }
  }
}

/** What to do about the refusals a caller can act on. */
const REFUSAL_HINTS: Record<string, string> = {
  DeviceDisabled: 'enable the edge device at the hub to manage its modules',
  DeviceNotInScope: 'only the modules of this edge device, or of edge devices below it, are managed from here',
  DeviceNotEdge: 'module identities are managed on behalf of IoT Edge devices only',
  ArgumentInvalid: 'correct the module name in the deployment',
  AuthChainInvalid: 'check the parent/child links of the edge devices between here and the hub',
};

function keysOf(m: ModuleOnBehalfOfJson): ModuleIdentityKeys {
  const key = m.authentication?.symmetricKey;
  if (!key?.primaryKey || !key.secondaryKey) {
    throw new ModuleIdentityError(
      `module identity ${m.deviceId}/${m.moduleId} has no SAS keys (authentication type ${m.authentication?.type}); give it SAS authentication to run it as a module`,
      'refused',
    );
  }
  return {
    moduleId: m.moduleId,
    generationId: m.generationId,
    primaryKey: key.primaryKey,
    secondaryKey: key.secondaryKey,
  };
}
