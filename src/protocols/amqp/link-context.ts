import type { Receiver, Sender } from 'rhea';
import type { AmqpErrorInfo } from './errors.ts';
import type { ClientConnection, LinkContext, LinkHandler, LinkRole } from './types.ts';

/** Where a link context reports its link gone: the connection's link table (link-table.ts). */
export interface LinkRegistry {
  forget(link: Sender | Receiver): { handler?: LinkHandler } | undefined;
}

interface EndpointInternals {
  state: { local_open: boolean; open_requests: number };
  local: { attach: { source?: unknown; target?: unknown } };
}

export class LinkContextImpl implements LinkContext {
  private isClosed = false;
  private attachSent = true;
  constructor(
    readonly conn: ClientConnection,
    private readonly registry: LinkRegistry,
    readonly role: LinkRole,
    readonly link: Sender | Receiver,
    readonly address: string,
    readonly path: string,
    readonly properties: Record<string, unknown>,
  ) {}

  get closed(): boolean {
    return this.isClosed;
  }

  /** Undoes rhea's automatic attach reply (rhea internals: the endpoint state of the link). */
  holdAttach(): void {
    const st = (this.link as unknown as EndpointInternals).state;
    if (st.local_open) {
      st.local_open = false;
      st.open_requests = Math.max(0, st.open_requests - 1);
      this.attachSent = false;
    }
  }

  /** Sends the held attach reply (with the terminus set by then). */
  sendAttach(): void {
    if (this.attachSent) return;
    this.attachSent = true;
    this.link.open();
  }

  detach(error?: AmqpErrorInfo): void {
    if (!this.isClosed && !this.conn.closed) {
      try {
        if (!this.attachSent) {
          // Refused before the attach reply: it names no node, and the detach carries the reason.
          const local = (this.link as unknown as EndpointInternals).local.attach;
          if (this.role === 'sender') local.source = undefined;
          else local.target = undefined;
          this.sendAttach();
        }
        this.link.close(error as never);
      } catch {
        /* the session is already gone */
      }
    }
    this.gone();
  }

  /** The link is over, whoever ended it: tell its handler once. */
  gone(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    const entry = this.registry.forget(this.link);
    const handler = entry?.handler;
    if (handler?.closed) safe(() => handler.closed!(), undefined);
  }
}

export function safe<T>(fn: () => T, fallback: T): T {
  try {
    return fn();
  } catch {
    return fallback;
  }
}
