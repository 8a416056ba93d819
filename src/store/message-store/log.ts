import { childLog } from '../../util/log.ts';

/** One logger for every part of the message store. */
export const log = childLog('store');
