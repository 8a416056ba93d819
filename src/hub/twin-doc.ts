import type { MetaNode, StoredProperties, StoredTwin } from '../store/registry-store.ts';
import type { TwinPropertiesJson } from './types.ts';
import { badRequest, type HubError } from '../model/errors.ts';
import { TWIN_MAX_DEPTH, nestsDeeperThan, tooDeepMessage } from '../util/json-depth.ts';

/** IoT Hub's twin limits: 10 levels of nesting, 32 KiB each for desired and reported, 16 KiB of tags. */
export const TWIN_LIMITS = {
  maxDepth: TWIN_MAX_DEPTH,
  desiredBytes: 32 * 1024,
  reportedBytes: 32 * 1024,
  tagsBytes: 16 * 1024,
  keyBytes: 1024,
};

export const NEVER = '0001-01-01T00:00:00Z';

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function newProperties(now: string, withVersionMeta: boolean): StoredProperties {
  const meta: MetaNode = { $lastUpdated: now };
  if (withVersionMeta) meta.$lastUpdatedVersion = 1;
  return { values: {}, meta, version: 1 };
}

export function newTwin(now: string): StoredTwin {
  return { version: 1, tags: {}, desired: newProperties(now, true), reported: newProperties(now, false), modelId: '' };
}

/** `AAAAAAAAAAE=` style: the twin version as 8 big-endian bytes, base64, as IoT Hub shows it. */
export function twinEtag(version: number): string {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(version));
  return b.toString('base64');
}

export function propertiesJson(p: StoredProperties): TwinPropertiesJson {
  return {
    ...structuredClone(p.values),
    $metadata: structuredClone(p.meta) as Record<string, unknown>,
    $version: p.version,
  };
}

/**
 * Checks a patch (or a replacement) for desired/reported/tags: a JSON object whose keys are
 * non-empty, have no `.`, `$`, space or control characters, and whose objects and arrays nest
 * at most 10 levels below it (IoT Hub's `one` ... `ten` example is the deepest legal twin);
 * null deletes in a patch and is dropped from a replacement. Root `$version`/`$metadata` are
 * ignored: tools often send back a twin they read.
 */
export function cleanPatch(what: string, patch: unknown): Record<string, unknown> {
  if (!isPlainObject(patch)) throw badRequest(`${what} must be a JSON object`);
  // Before anything recursive touches it: deep arrays would otherwise exhaust the stack.
  if (nestsDeeperThan(patch, TWIN_LIMITS.maxDepth)) throw tooDeep(what);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(patch)) {
    if (k === '$version' || k === '$metadata') continue;
    checkName(what, k);
    out[k] = v;
  }
  checkLevel(what, out);
  return out;
}

/** The refusal of a twin section nested past IoT Hub's limit, the same at every entry point. */
export function tooDeep(what: string): HubError {
  return badRequest(tooDeepMessage(what, TWIN_LIMITS.maxDepth));
}

/**
 * `__proto__` is refused outright: as a plain object's key it is the prototype, so merging it
 * (mergeValues, applyPropertiesPatch) would write into Object.prototype of the whole process.
 */
function checkName(path: string, k: string): void {
  if (k === '__proto__') throw badRequest(`property name "__proto__" in ${path} is reserved`);
}

function checkLevel(path: string, obj: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(obj)) {
    checkName(path, k);
    if (!k) throw badRequest(`${path} has an empty property name`);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: IoT Hub refuses control characters in property names
    if (/[.$ \u0000-\u001f\u007f-\u009f]/.test(k)) {
      throw badRequest(
        `property name "${k}" in ${path} contains a character IoT Hub does not allow (. $ space or a control character)`,
      );
    }
    if (Buffer.byteLength(k) > TWIN_LIMITS.keyBytes)
      throw badRequest(`property name in ${path} is longer than ${TWIN_LIMITS.keyBytes} bytes`);
    if (isPlainObject(v)) checkLevel(`${path}.${k}`, v);
    else if (Array.isArray(v)) checkArray(`${path}.${k}`, v);
    else if (v !== null && !['string', 'number', 'boolean'].includes(typeof v) && !Array.isArray(v)) {
      throw badRequest(`${path}.${k} has a value of type ${typeof v}, which a twin cannot hold`);
    }
  }
}

/** Objects inside arrays follow the same key rules; the depth was bounded before. */
function checkArray(path: string, items: unknown[]): void {
  items.forEach((item, i) => {
    if (isPlainObject(item)) checkLevel(`${path}[${i}]`, item);
    else if (Array.isArray(item)) checkArray(`${path}[${i}]`, item);
  });
}

/** Merges a JSON merge patch into plain values (null deletes); no metadata. Used for tags. */
export function mergeValues(target: Record<string, unknown>, patch: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete target[k];
    else if (isPlainObject(v)) {
      const cur = target[k];
      const next = isPlainObject(cur) ? cur : {};
      mergeValues(next, v);
      target[k] = next;
    } else target[k] = structuredClone(v);
  }
}

/** Drops nulls from a replacement document (a replace has nothing to delete). */
export function withoutNulls(v: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (x === null) continue;
    out[k] = isPlainObject(x) ? withoutNulls(x) : structuredClone(x);
  }
  return out;
}

/**
 * Applies a merge patch to desired or reported properties, bumping `$version` and stamping
 * `$metadata` for every property the patch touched.
 */
export function applyPropertiesPatch(
  p: StoredProperties,
  patch: Record<string, unknown>,
  now: string,
  withVersionMeta: boolean,
): void {
  p.version += 1;
  const stamp = (): MetaNode =>
    withVersionMeta ? { $lastUpdated: now, $lastUpdatedVersion: p.version } : { $lastUpdated: now };
  const walk = (values: Record<string, unknown>, meta: MetaNode, patch: Record<string, unknown>): void => {
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) {
        delete values[k];
        delete meta[k];
      } else if (isPlainObject(v)) {
        if (!isPlainObject(values[k])) {
          values[k] = {};
          meta[k] = stamp();
        }
        const childMeta = meta[k] as MetaNode;
        walk(values[k] as Record<string, unknown>, childMeta, v);
        Object.assign(childMeta, stamp());
      } else {
        values[k] = structuredClone(v);
        meta[k] = stamp();
      }
    }
  };
  walk(p.values, p.meta, patch);
  Object.assign(p.meta, stamp());
}

export function checkSize(what: string, value: Record<string, unknown>, limit: number): void {
  const size = Buffer.byteLength(JSON.stringify(value));
  if (size > limit) throw badRequest(`${what} would be ${size} bytes, more than the ${limit} bytes IoT Hub allows`);
}
