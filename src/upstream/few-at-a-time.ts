/**
 * Runs queued work a few items at a time, in arrival order: a storm of devices connecting below
 * must not become a storm of attaches or announcements at the parent (10,000 at once starved
 * both ends until devices timed out before their CONNACK).
 */
export class FewAtATime<T> {
  private queue: T[] = [];
  private head = 0;
  private running = 0;

  /** `run` handles its own failures: a rejection only frees its place. */
  constructor(
    private readonly limit: number,
    private readonly run: (item: T) => Promise<unknown>,
  ) {}

  push(item: T): void {
    this.queue.push(item);
    this.next();
  }

  /** Drops what has not started; what runs finishes. */
  clear(): void {
    this.queue = [];
    this.head = 0;
  }

  private next(): void {
    while (this.running < this.limit && this.head < this.queue.length) {
      const item = this.queue[this.head++]!;
      if (this.head === this.queue.length) this.clear();
      this.running++;
      const done = () => {
        this.running--;
        this.next();
      };
      this.run(item).then(done, done);
    }
  }
}
