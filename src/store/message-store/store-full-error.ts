import { UserError } from '../../util/errors.ts';

/**
 * The store refused an append because a size limit is reached, or its disk is under the
 * free-space reserve ('disk': `max` is the reserve, `current` the free bytes); the sender
 * should not get an acknowledgement.
 */
export class StoreFullError extends UserError {
  readonly code = 'STORE_FULL';
  constructor(
    readonly limit: 'maxBytes' | 'maxMessages' | 'disk',
    readonly max: number,
    readonly current: number,
    reason?: string,
  ) {
    super(
      limit === 'disk'
        ? (reason ?? `store full: ${current} bytes free on the disk, under the reserve of ${max}`)
        : limit === 'maxBytes'
          ? `message store full: ${current} of ${max} bytes used`
          : `message store full: ${current} of ${max} messages stored`,
      limit === 'disk'
        ? 'free space on the disk of the data directory; queued messages drain to their endpoints meanwhile'
        : `raise the store's ${limit} setting, or restore the endpoints so queued messages drain`,
    );
    this.name = 'StoreFullError';
  }
}
