import type { ScopeError } from '../identity/scope.ts';
import { HubError, badRequest } from '../model/errors.ts';

/** The scope API's refusals, with the status and code a caller can act on. */

export const notInScope = (message: string) => new HubError(403, 'DeviceNotInScope', message);
export const chainInvalid = (message: string) => new HubError(403, 'AuthChainInvalid', message);
export const unauthorized = (message: string) => new HubError(401, 'IotHubUnauthorizedAccess', message);

/** Maps a refusal of the scope rules onto the status and code a caller can act on. */
export function scopeRefusal(err: ScopeError): HubError {
  switch (err.code) {
    case 'not-found':
      return new HubError(404, 'DeviceNotFound', err.message);
    case 'out-of-scope':
      return notInScope(err.message);
    case 'bad-chain':
      return badRequest(err.message);
    default:
      return chainInvalid(err.message);
  }
}
