import { HubEventFollower } from './hub-events.ts';
import { TABLE_LEGEND, hubClient, ratesBetween, renderTable, takeSnapshot, type Snapshot } from './status.ts';
import type { TopologyState } from './state.ts';

/**
 * The live one-screen summary: every node's table row and a line counting the messages the
 * hub's event stream receives, redrawn every second until the signal aborts. On a terminal the
 * screen is redrawn in place; otherwise each refresh is printed after the previous one.
 */

export interface WatchOptions {
  out: NodeJS.WritableStream & { isTTY?: boolean };
  signal: AbortSignal;
  intervalMs?: number;
  /** What Ctrl-C does, for the title line. */
  ctrlC: string;
}

const RATE_WINDOW_MS = 5000;

function clock(d = new Date()): string {
  return d.toTimeString().slice(0, 8);
}

export function eventsLine(follower: HubEventFollower, sensors: string[], ratePerSec: number | undefined): string[] {
  const seen = sensors.filter((s) => follower.byDevice.has(s));
  const rate = ratePerSec === undefined ? '' : ` (${ratePerSec.toFixed(1)}/s)`;
  const lines = [
    `at the hub (event stream): ${follower.total} messages since the watch began${rate}, from ${seen.length} of ${sensors.length} sensors`,
  ];
  const missing = sensors.filter((s) => !follower.byDevice.has(s));
  if (missing.length > 0 && missing.length < sensors.length) lines.push(`  not seen yet: ${missing.join(', ')}`);
  if (follower.byModule.size > 0)
    lines.push(`  from modules: ${[...follower.byModule].map(([m, n]) => `${m} ${n}`).join(', ')}`);
  if (follower.last) lines.push(`  last: ${follower.last.deviceId} ${follower.last.body.slice(0, 80)}`);
  if (follower.error) lines.push(`  event stream: ${follower.error}`);
  return lines;
}

/** Waits `ms` or until the signal aborts, leaving no listener on the signal either way (one a second would leak). */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

export async function watchTopology(state: TopologyState, o: WatchOptions): Promise<void> {
  const interval = o.intervalMs ?? 1000;
  const client = hubClient(state);
  const follower = new HubEventFollower(client);
  follower.start();
  const tty = o.out.isTTY === true;
  // Rates over the last few seconds: sensors send every few seconds, so one second would flicker.
  const history: Array<{ snap: Snapshot; total: number }> = [];
  const sensors = state.sensors.map((s) => s.id);
  try {
    while (!o.signal.aborted) {
      const started = Date.now();
      const snap = await takeSnapshot(state, { hubClient: client });
      history.push({ snap, total: follower.total });
      while (history.length > 2 && history[1]!.snap.at <= snap.at - RATE_WINDOW_MS) history.shift();
      const oldest = history.length > 1 ? history[0]! : undefined;
      const rates = ratesBetween(oldest?.snap, snap);
      const hubRate = oldest
        ? ((follower.total - oldest.total) * 1000) / Math.max(1, snap.at - oldest.snap.at)
        : undefined;
      const title = `strata topology${state.name ? ` "${state.name}"` : ''} from ${state.file}  ${clock()}  (${o.ctrlC})`;
      const screen = [
        title,
        '',
        renderTable(snap, rates),
        '',
        ...eventsLine(follower, sensors, hubRate),
        '',
        TABLE_LEGEND,
      ].join('\n');
      o.out.write(tty ? `\x1b[H\x1b[J${screen}\n` : `${screen}\n\n`);
      const wait = Math.max(0, interval - (Date.now() - started));
      await pause(wait, o.signal);
    }
  } finally {
    await follower.stop();
    client.close();
  }
}
