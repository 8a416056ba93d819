import type { FastifyRequest } from 'fastify';
import { authenticate } from '../identity/authenticate.ts';
import type { ScopeModule } from '../identity/scope.ts';
import { EngineError, HubError, moduleNotFound } from '../model/errors.ts';
import { clientCertificateOf } from '../protocols/http/client-cert.ts';
import { authDepsOf, type IdentitySource } from './contract.ts';

/**
 * An IoT Edge device reading one of its own module identities with its OWN credential (its
 * SAS token, or its X.509 certificate presented in the TLS handshake) instead of a shared access
 * policy: `GET /devices/{id}/modules/{mid}`, the device-scope form of the registry call.
 *
 * Why: an edge device provisioned with a certificate has no symmetric key to sign its gateway's
 * `{edge}/$edgeHub` tokens with. Like IoT Edge's identity service, it proves itself with the
 * certificate and reads the key of its `$edgeHub` module, then signs with that. The hub answers
 * from its registry (beside the policy-authenticated service API on the same path); a gateway
 * answers its child edge devices from its scope cache, which holds their modules because it
 * authenticates them (asking its parent once for a module it does not know yet).
 */

/** True when the request carries a device credential rather than a policy token (`skn=`). */
export function hasDeviceCredential(req: FastifyRequest): boolean {
  const header = req.headers.authorization;
  const token = Array.isArray(header) ? header[0] : header;
  if (token === undefined || token.trim() === '') return clientCertificateOf(req.raw.socket) !== undefined;
  return /^SharedAccessSignature /i.test(token.trim()) && !/[&\s]skn=/i.test(token);
}

export type OwnModuleReader = (req: FastifyRequest, deviceId: string, moduleId: string) => Promise<ScopeModule>;

const unauthorized = (message: string) => new HubError(401, 'IotHubUnauthorizedAccess', message);

export function ownModuleReader(
  source: IdentitySource,
  opts: { fetchUpstream?: (deviceId: string, moduleId: string) => Promise<void> } = {},
): OwnModuleReader {
  const deps = authDepsOf(source);
  return async (req, deviceId, moduleId) => {
    const header = req.headers.authorization;
    const token = Array.isArray(header) ? header[0] : header;
    const cert = token ? undefined : clientCertificateOf(req.raw.socket);
    try {
      // The device itself, not one of its modules: a module's credential reads nothing here.
      await authenticate({ deviceId, sasToken: token, clientCertificate: cert }, deps);
    } catch (err) {
      if (err instanceof EngineError) throw unauthorized(err.message);
      throw err;
    }
    if (!source.getDevice(deviceId)?.capabilities.iotEdge) {
      throw new HubError(
        403,
        'IotHubUnauthorizedAccess',
        `device ${deviceId} is not an IoT Edge device: only edge devices read their module identities with their own credentials`,
      );
    }
    let module = source.getModule(deviceId, moduleId);
    if (!module && opts.fetchUpstream) {
      // The parent unreachable, the cache's answer stands.
      await opts.fetchUpstream(deviceId, moduleId).catch(() => undefined);
      module = source.getModule(deviceId, moduleId);
    }
    if (!module) throw moduleNotFound(deviceId, moduleId);
    return {
      deviceId: module.deviceId,
      moduleId: module.moduleId,
      generationId: module.generationId,
      ...(module.etag !== undefined ? { etag: module.etag } : {}),
      ...(module.managedBy !== undefined ? { managedBy: module.managedBy } : {}),
      authentication: module.authentication,
    };
  };
}
