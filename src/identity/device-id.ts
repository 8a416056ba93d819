/**
 * Device and module id rules as IoT Hub applies them: ASCII letters and digits plus
 * `- . % _ * ? ! ( ) , : = @ $ '`, at most 128 characters. `/`, `+` and `#` would break MQTT
 * topics and HTTP paths, so they are never accepted.
 */

export const MAX_ID_LENGTH = 128;

const ID_PATTERN = /^[A-Za-z0-9\-.%_*?!(),:=@$']+$/;

/** Module ids that only the hub itself creates (an edge device's runtime modules). */
export const EDGE_AGENT = '$edgeAgent';
export const EDGE_HUB = '$edgeHub';
export const EDGE_SYSTEM_MODULES: readonly string[] = [EDGE_AGENT, EDGE_HUB];

/** Returns why `id` is not a valid device id, or undefined when it is. */
export function deviceIdProblem(id: unknown): string | undefined {
  return idProblem(id, 'device id');
}

/** Returns why `id` is not a valid module id, or undefined when it is. */
export function moduleIdProblem(id: unknown): string | undefined {
  return idProblem(id, 'module id');
}

function idProblem(id: unknown, what: string): string | undefined {
  if (typeof id !== 'string' || id.length === 0) return `${what} is missing`;
  if (id.length > MAX_ID_LENGTH) return `${what} is ${id.length} characters long, the maximum is ${MAX_ID_LENGTH}`;
  if (!ID_PATTERN.test(id)) {
    const bad = [...id].find((c) => !ID_PATTERN.test(c));
    const shown = bad === undefined ? '' : JSON.stringify(bad);
    return `${what} "${id}" contains the character ${shown}, which is not allowed (use ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ ')`;
  }
  return undefined;
}

/** Module ids starting with `$` are reserved for the edge runtime's own modules. */
export function isReservedModuleId(id: string): boolean {
  return id.startsWith('$');
}
