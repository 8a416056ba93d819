import { childLog } from '../../util/log.ts';

/** One logger for every part of the event stream. */
export const log = childLog('event-stream');
