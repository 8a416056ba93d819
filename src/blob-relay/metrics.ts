import { Counter, type Registry } from 'prom-client';

/** The blob relay's metrics, beside the gateway's other `edgehub_*` metrics. */
export class BlobMetrics {
  /** result: kept (the top's directory), forwarded (the parent answered 201), refused, failed. */
  readonly uploads: Counter<'result'>;
  readonly bytes: Counter<'result'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.uploads = new Counter({
      name: 'edgehub_blob_uploads_total',
      help: 'Blob uploads at /storage/, by result (kept, forwarded, refused, failed)',
      labelNames: ['result'],
      registers,
    });
    this.bytes = new Counter({
      name: 'edgehub_blob_bytes_total',
      help: 'Bytes of blob uploads kept here or forwarded to the parent, by result (kept, forwarded)',
      labelNames: ['result'],
      registers,
    });
  }
}
