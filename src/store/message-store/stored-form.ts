import type Database from 'better-sqlite3';
import { identityKey } from '../../model/identity.ts';
import { recordPrefixOf, reviveSenderMessage, SenderMessage } from '../sender-message.ts';
import type { MessageRow } from './state.ts';
import type { StoredMessage } from './types.ts';

/**
 * How a message is kept in its row's `meta` column: a device's message as its short record
 * (sender-message.ts), anything else as JSON of its fields. They are told apart by the first
 * character, `{` for JSON.
 */

export function metaOf(m: StoredMessage): string {
  return m instanceof SenderMessage
    ? m.record()
    : JSON.stringify({ s: m.systemProperties, a: m.appProperties, src: m.source, snd: m.sender });
}

export function messageOfRow(row: MessageRow): StoredMessage {
  if (row.meta.charCodeAt(0) !== 0x7b) return reviveSenderMessage(row.meta, row.body);
  const meta = JSON.parse(row.meta) as {
    s: StoredMessage['systemProperties'];
    a: StoredMessage['appProperties'];
    src: string;
    snd: string;
  };
  return { body: row.body, systemProperties: meta.s, appProperties: meta.a, source: meta.src, sender: meta.snd };
}

/** True when the endpoint's queue holds a committed entry from this sender (a scan of the queue). */
export function queuedFrom(
  db: Database.Database,
  epId: number,
  identity: { deviceId: string; moduleId?: string },
): boolean {
  const prefix = recordPrefixOf(identity.deviceId, identity.moduleId);
  const sender = identityKey(identity.deviceId, identity.moduleId);
  // Records of a device's message begin with its ids; anything else is JSON naming its sender.
  return (
    db
      .prepare(
        'SELECT 1 FROM queue q JOIN messages m ON m.seq = q.seq WHERE q.ep = ? AND ' +
          "(substr(m.meta, 1, ?) = ? OR (substr(m.meta, 1, 1) = '{' AND instr(m.meta, ?) > 0)) LIMIT 1",
      )
      .pluck()
      .get(epId, prefix.length, prefix, `"snd":${JSON.stringify(sender)}`) !== undefined
  );
}
