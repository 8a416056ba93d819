/**
 * Route sinks. An endpoint's `id` is its identity: two routes into the same id deliver a
 * message once. Module ids and input names keep their case (the original keys endpoints
 * case-sensitively by module and input); `$upstream` is matched in any case.
 */

export type Endpoint =
  | { kind: 'upstream'; id: '$upstream' }
  | { kind: 'module'; id: string; moduleId: string; input: string };

export const UPSTREAM: Endpoint = Object.freeze({ kind: 'upstream', id: '$upstream' });

export function moduleInput(moduleId: string, input: string): Endpoint {
  return Object.freeze({ kind: 'module', id: `/modules/${moduleId}/inputs/${input}`, moduleId, input });
}

/**
 * The address inside BrokeredEndpoint("..."): /modules/{mid}/inputs/{input}. Like the original,
 * surrounding spaces and one leading and one trailing "/" are ignored and exactly four parts are
 * required, of which the second is the module and the fourth the input; the first and third
 * words are not checked by the original, so they are not here either. Returns an error text.
 */
export function parseBrokeredAddress(address: string): Endpoint | string {
  let a = address.trim();
  if (a.startsWith('/')) a = a.slice(1);
  if (a.endsWith('/')) a = a.slice(0, -1);
  const parts = a.split('/');
  if (parts.length !== 4) {
    return `endpoint address "${address}" is not of the form /modules/{module}/inputs/{input}`;
  }
  const [, moduleId, , input] = parts;
  if (moduleId === '' || input === '') return `endpoint address "${address}" has an empty module or input name`;
  return moduleInput(moduleId, input);
}
