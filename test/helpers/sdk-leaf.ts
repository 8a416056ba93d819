import { createRequire } from 'node:module';

/** Small pieces the end-to-end tests with official device SDK leaves share. */

const require = createRequire(import.meta.url);
const { Client } = require('azure-iot-device');

/** Opens a leaf of the official device SDK trusting `ca`, closed when the test ends. */
export async function openSdkLeaf(t: { after(fn: () => unknown): void }, connectionString: string, Transport: unknown, ca: string, prepare?: (c: any) => void): Promise<any> {
  const client = Client.fromConnectionString(connectionString, Transport);
  t.after(() => client.close().catch(() => undefined));
  await client.setOptions({ ca });
  prepare?.(client);
  await client.open();
  return client;
}

/** Polls `fn` until it returns something other than undefined or false. */
export async function eventually<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, ms = 15_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The SDK's reported-properties update as a promise. */
export function updateReported(twin: any, patch: Record<string, unknown>): Promise<void> {
  return new Promise((resolve, reject) => twin.properties.reported.update(patch, (err: Error | null) => (err ? reject(err) : resolve())));
}

/**
 * Sends desired patches `{ mode: 'm1' }`, `{ mode: 'm2' }`, ... until one reaches the SDK
 * twin: a gateway attaches its upstream desired link only once the leaf subscribes, so the
 * first patch may come before anyone listens. Each try waits `tryMs` for its push.
 */
export async function desiredPushArrives(twin: any, sendDesired: (patch: { mode: string }) => Promise<unknown>, tryMs = 1000): Promise<void> {
  const pushed: any[] = [];
  twin.on('properties.desired', (p: any) => pushed.push(p));
  let n = 0;
  await eventually('a desired push at the leaf', async () => {
    n++;
    await sendDesired({ mode: `m${n}` });
    const deadline = Date.now() + tryMs;
    while (Date.now() < deadline) {
      if (pushed.some((p) => p.mode === `m${n}`)) return true;
      await new Promise((r) => setTimeout(r, 20));
    }
    return false;
  });
}
