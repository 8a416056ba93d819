import { UserError } from '../util/errors.ts';

/** `Key=Value;Key2=Value2` as IoT Hub connection strings are written; values may contain `=`. */
export function parseConnectionString(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of text.split(';')) {
    if (!part.trim()) continue;
    const eq = part.indexOf('=');
    if (eq <= 0)
      throw new UserError(`malformed connection string part "${part}"`, 'Expected Key=Value pairs separated by ";"');
    out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

export function formatConnectionString(fields: Record<string, string | undefined>): string {
  return Object.entries(fields)
    .filter(([, v]) => v !== undefined && v !== '')
    .map(([k, v]) => `${k}=${v}`)
    .join(';');
}
