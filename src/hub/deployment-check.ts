import { EDGE_HUB } from '../identity/device-id.ts';
import { routeTableFromEdgeHubDesired } from '../routing/route-table.ts';
import { badRequest } from '../model/errors.ts';

/**
 * Deployments are checked where they enter the hub: a `$edgeHub` twin whose desired properties
 * a gateway cannot compile would otherwise be stored, answered 204, and only refused by each
 * gateway later, out of sight. Desired properties with no content (no deployment yet) pass.
 * IoT Hub answers a bad configuration content with InvalidConfigurationContent; twin updates
 * use ArgumentInvalid.
 */
export function checkEdgeHubDesired(
  moduleId: string | undefined,
  desired: Record<string, unknown>,
  code: 'InvalidConfigurationContent' | 'ArgumentInvalid',
): void {
  if (moduleId !== EDGE_HUB) return;
  if (!Object.keys(desired).some((k) => !k.startsWith('$'))) return;
  try {
    routeTableFromEdgeHubDesired(desired);
  } catch (err) {
    const hint = (err as { hint?: string }).hint;
    throw badRequest(
      `the ${EDGE_HUB} desired properties are not a deployment a gateway can use: ${(err as Error).message}${hint ? ` (${hint})` : ''}`,
      code,
    );
  }
}
