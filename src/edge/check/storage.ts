/** The storage group: the data directory's disk, writable, persistent and above the store's reserve. */
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join, resolve, sep } from 'node:path';
import { DEFAULT_DISK_RESERVE_BYTES, isDiskFull, mib, reserveBytesOf, statfsFree } from '../../store/disk-headroom.ts';
import type { EdgeConfig } from '../config.ts';
import { readGatewayState, runningGatewayPid } from '../local.ts';
import { result, type CheckResult } from './checks.ts';

/** The file system type and mount point holding `path` (Linux; undefined elsewhere). */
function mountOf(path: string): { mountPoint: string; type: string } | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/self/mounts', 'utf8');
  } catch {
    return undefined;
  }
  let best: { mountPoint: string; type: string } | undefined;
  for (const line of text.split('\n')) {
    const [, mp, type] = line.split(' ');
    if (!mp || !type) continue;
    const mountPoint = mp.replace(/\\040/g, ' ');
    const inside =
      path === mountPoint || path.startsWith(mountPoint.endsWith(sep) ? mountPoint : `${mountPoint}${sep}`);
    if (inside && (!best || mountPoint.length >= best.mountPoint.length)) best = { mountPoint, type };
  }
  return best;
}

const VOLATILE_FS = new Set(['tmpfs', 'ramfs']);

function under(path: string, dir: string): boolean {
  const d = resolve(dir);
  return path === d || path.startsWith(`${d}${sep}`);
}

/**
 * The data directory's disk has more free space than the store's reserve: under it, the running
 * gateway refuses new messages ("store full").
 */
export function checkStorage(
  dataDir: string | undefined,
  how: string,
  disk: { reserveBytes: number; setting: string } = {
    reserveBytes: DEFAULT_DISK_RESERVE_BYTES,
    setting: '[strata] disk_reserve_mb',
  },
  runningStoreFull?: string,
): CheckResult {
  const id = 'storage';
  if (!dataDir) return result(id, 'skipped', 'no data directory known: the config has no device id', 'Pass --data DIR');
  const fix = `Give the gateway a data directory on persistent storage: \`strata edge start --data /var/lib/strata/edge-ID\` (and the same --data here)`;
  let existing = dataDir;
  while (!existsSync(existing) && dirname(existing) !== existing) existing = dirname(existing);
  let st;
  try {
    st = statSync(existing);
  } catch (err) {
    return result(id, 'error', `cannot look at ${existing}: ${(err as Error).message}`, fix);
  }
  if (!st.isDirectory()) return result(id, 'error', `${existing} is not a directory`, fix);
  const probe = join(existing, `.strata-check-${process.pid}`);
  try {
    writeFileSync(probe, 'x');
    rmSync(probe, { force: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'EROFS'
        ? 'the file system is read-only'
        : code === 'EACCES' || code === 'EPERM'
          ? 'permission denied'
          : (err as Error).message;
    if (isDiskFull(err)) return storeFull(existing, 0, disk);
    return result(
      id,
      'error',
      `cannot write in ${existing}: ${why}`,
      `Make ${existing} writable by the gateway's user, or pass another --data`,
    );
  }
  let free: number | undefined;
  try {
    free = statfsFree(existing);
  } catch {
    // not measurable here: the other findings stand
  }
  if (runningStoreFull) return result(id, 'error', `the running gateway says: ${runningStoreFull}`, STORE_FULL_FIX);
  if (free !== undefined && free < disk.reserveBytes) return storeFull(existing, free, disk);
  const where = `${dataDir}${how ? ` (${how})` : ''}`;
  const state =
    existing === dataDir
      ? 'is writable'
      : `does not exist yet; the gateway creates it on first start (${existing} is writable)`;
  const mount = mountOf(existing);
  const temp = [tmpdir(), '/tmp', '/dev/shm', '/run'].find((d) => under(dataDir, d));
  if (temp || (mount && VOLATILE_FS.has(mount.type))) {
    const why = [
      temp ? `it is under ${resolve(temp)}` : '',
      mount && VOLATILE_FS.has(mount.type) ? `it is on ${mount.type} (${mount.mountPoint}), kept in memory` : '',
    ]
      .filter(Boolean)
      .join(' and ');
    return result(
      id,
      'warning',
      `${where} ${state}, but ${why}: the message store, identity cache and certificates may be lost on reboot`,
      fix,
    );
  }
  return result(id, 'pass', `${where} ${state}${mount ? `, on ${mount.type} (${mount.mountPoint})` : ''}`);
}

function storeFull(dir: string, free: number, disk: { reserveBytes: number; setting: string }): CheckResult {
  return result(
    'storage',
    'error',
    `store full: the disk holding ${dir} has ${mib(free)} free, under the reserve of ${mib(disk.reserveBytes)} (${disk.setting}): the gateway refuses new messages`,
    STORE_FULL_FIX,
  );
}

const STORE_FULL_FIX =
  'Free space on that disk (or give the gateway a larger one with --data); queued messages keep draining upstream';

/**
 * What the gateway running from `dataDir` says of its store (its /health): the reason it is
 * full, or undefined (not full, not running, not answering).
 */
export function runningStoreFull(dataDir: string | undefined, timeoutMs: number): Promise<string | undefined> {
  const state =
    dataDir !== undefined && runningGatewayPid(dataDir) !== undefined ? readGatewayState(dataDir) : undefined;
  if (!state) return Promise.resolve(undefined);
  return new Promise((done) => {
    // Our own process on this host, asked for nothing secret: its certificate is checked elsewhere (server-cert).
    const req = https.get(
      { host: state.bind, port: state.ports.https, path: '/health', rejectUnauthorized: false, timeout: timeoutMs },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => {
          try {
            const full = (JSON.parse(text) as { storeFull?: unknown }).storeFull;
            done(typeof full === 'string' ? full : undefined);
          } catch {
            done(undefined);
          }
        });
        res.on('error', () => done(undefined));
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => done(undefined));
  });
}

/** The reserve the gateway keeps free, as it reads it (a bad value is the config check's to report). */
export function diskReserve(config: EdgeConfig | undefined): { reserveBytes: number; setting: string } {
  const setting = '[strata] disk_reserve_mb';
  try {
    const v = config?.settings.disk_reserve_mb ?? process.env.STRATA_DISK_RESERVE_MB;
    if (v !== undefined && v !== '') return { reserveBytes: reserveBytesOf(v, setting), setting };
  } catch {
    // the default then
  }
  return { reserveBytes: DEFAULT_DISK_RESERVE_BYTES, setting };
}
