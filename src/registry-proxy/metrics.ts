import { Counter, Gauge, type Registry } from 'prom-client';

/** The registry API's metrics, registered beside the gateway's other `edgehub_*` metrics. */
export class RegistryMetrics {
  readonly pulls: Counter;
  readonly hits: Counter<'kind'>;
  readonly misses: Counter<'kind'>;
  readonly bytes: Counter<'source'>;
  readonly refusals: Counter<'reason'>;

  constructor(registry: Registry, cache: () => { bytes: number; count: number }) {
    const registers = [registry];
    this.pulls = new Counter({
      name: 'edgehub_registry_pulls_total',
      help: 'Image manifests served to clients of this gateway (one or more per image pull)',
      registers,
    });
    this.hits = new Counter({
      name: 'edgehub_registry_cache_hits_total',
      help: 'Registry requests answered from this gateway cache, by kind (manifest, blob)',
      labelNames: ['kind'],
      registers,
    });
    this.misses = new Counter({
      name: 'edgehub_registry_cache_misses_total',
      help: 'Registry requests sent on to the parent (or the upstream registry at the top), by kind (manifest, tag, blob)',
      labelNames: ['kind'],
      registers,
    });
    this.bytes = new Counter({
      name: 'edgehub_registry_bytes_total',
      help: 'Bytes of manifests and blobs served to clients, by source (cache, parent)',
      labelNames: ['source'],
      registers,
    });
    this.refusals = new Counter({
      name: 'edgehub_registry_refusals_total',
      help: 'Registry requests refused: unauthenticated, denied, bad_request, unsupported, digest_mismatch, upstream_unavailable',
      labelNames: ['reason'],
      registers,
    });
    new Gauge({
      name: 'edgehub_registry_cache_bytes',
      help: 'Bytes kept in the registry cache now',
      registers,
      collect() {
        this.set(cache().bytes);
      },
    });
    new Gauge({
      name: 'edgehub_registry_cache_entries',
      help: 'Blobs and manifests kept in the registry cache now',
      registers,
      collect() {
        this.set(cache().count);
      },
    });
  }
}
