import { createRequire } from 'node:module';

/** Small pieces the end-to-end tests with official device SDK leaves share. */

const require = createRequire(import.meta.url);
const { Client } = require('azure-iot-device');

/** Opens a leaf of the official device SDK trusting `ca`, closed when the test ends. */
export async function openSdkLeaf(
  t: { after(fn: () => unknown): void },
  connectionString: string,
  Transport: unknown,
  ca: string,
  prepare?: (c: any) => void,
): Promise<any> {
  const client = Client.fromConnectionString(connectionString, Transport);
  t.after(() => client.close().catch(() => undefined));
  await client.setOptions({ ca });
  prepare?.(client);
  await client.open();
  return client;
}

/** Polls `fn` until it returns something other than undefined or false. */
export async function eventually<T>(
  what: string,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  ms = 15_000,
  everyMs = 25,
): Promise<T> {
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
  return new Promise((resolve, reject) =>
    twin.properties.reported.update(patch, (err: Error | null) => (err ? reject(err) : resolve())),
  );
}

/**
 * Listens for desired properties on an SDK twin and resolves once the subscription is
 * acknowledged where the leaf is connected (MQTT SUBACK, AMQP PUT answered); the pushes land in
 * the returned list (the first is the twin's current desired properties, which the SDK replays
 * to a new listener). Asking the transport again waits for the subscription the listener
 * started: the SDK queues the second request behind the first.
 */
export async function listenDesired(twin: any): Promise<any[]> {
  const pushed: any[] = [];
  twin.on('properties.desired', (p: any) => pushed.push(JSON.parse(JSON.stringify(p))));
  await new Promise<void>((resolve, reject) =>
    twin.enableTwinDesiredPropertiesUpdates((err: Error | null) => (err ? reject(err) : resolve())),
  );
  return pushed;
}

/** The push with desired `$version` `version` (waits up to `ms`; nothing is sent again). */
export function desiredPush(pushed: any[], version: number, ms = 20_000): Promise<any> {
  return eventually(
    `the desired push with $version ${version} at the leaf`,
    () => pushed.find((p) => p.$version === version),
    ms,
  );
}
