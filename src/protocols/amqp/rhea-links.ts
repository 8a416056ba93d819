import { createRequire } from 'node:module';

/**
 * rhea keeps a session's links in a plain object, adds and deletes keys as links come and go,
 * and walks it with `for...in` on every processing run of the connection (after each frame
 * read, each send). With a link per leaf (a gateway's upstream session holds one per device it
 * serves) the object is in dictionary mode and each walk enumerates and sorts every key: the
 * cost of one message grew with the number of leaves connected. Here a session walks an array of
 * its links, made again only when a link was added or removed; what each step does is rhea's.
 * Imported for this effect, with rhea-writer.ts, by the modules that open AMQP connections.
 */

interface RheaLink {
  name: string;
  _process(): void;
  is_open(): boolean;
  sendable(): boolean;
  is_sender(): boolean;
  dispatch(event: string, context: unknown): unknown;
  _context(): unknown;
}

interface RheaSession {
  links: Record<string, RheaLink>;
  local: { begin: unknown; end: unknown };
  state: { need_open(): boolean; need_close(): boolean; has_settled(): boolean };
  outgoing: { deliveries: { available(): number }; process(): void };
  incoming: { process(session: RheaSession): void };
  output(frame: unknown): void;
  [LINKS]?: RheaLink[];
}

interface SessionPrototype {
  _process(this: RheaSession): void;
  create_link(this: RheaSession, name: string, ctor: unknown, opts: unknown): RheaLink;
  remove_link(this: RheaSession, link: RheaLink): void;
  each_link(this: RheaSession, action: (l: RheaLink) => void, filter?: (l: RheaLink) => boolean): void;
  find_link(this: RheaSession, filter: (l: RheaLink) => boolean): RheaLink | undefined;
}

const LINKS = Symbol('strata.links');
const require = createRequire(import.meta.url);
const session = (require('rhea/lib/session.js') as { prototype: SessionPrototype }).prototype;

/** The session's links in rhea's order (insertion), made again after a change. */
function linksOf(s: RheaSession): RheaLink[] {
  let list = s[LINKS];
  if (!list) {
    list = Object.values(s.links);
    s[LINKS] = list;
  }
  return list;
}

const createLink = session.create_link;
session.create_link = function create_link(name, ctor, opts) {
  const link = createLink.call(this, name, ctor, opts);
  this[LINKS] = undefined;
  return link;
};

const removeLink = session.remove_link;
session.remove_link = function remove_link(link) {
  removeLink.call(this, link);
  this[LINKS] = undefined;
};

session.each_link = function each_link(action, filter) {
  for (const link of linksOf(this)) {
    // A link removed by an earlier action of this walk is skipped, as `for...in` skips it.
    if (this.links[link.name] !== link) continue;
    if (filter === undefined || filter(link)) action(link);
  }
};

session.find_link = function find_link(filter) {
  for (const link of linksOf(this)) if (this.links[link.name] === link && filter(link)) return link;
  return undefined;
};

session._process = function _process() {
  do {
    if (this.state.need_open()) this.output(this.local.begin);
    const wasBlocked = this.outgoing.deliveries.available() === 0;
    this.outgoing.process();
    if (wasBlocked && this.outgoing.deliveries.available()) {
      session.each_link.call(
        this,
        (sender: RheaLink) => sender.dispatch('sendable', sender._context()),
        (l: RheaLink) => l.is_sender() && l.is_open() && l.sendable(),
      );
    }
    this.incoming.process(this);
    for (const link of linksOf(this)) if (this.links[link.name] === link) link._process();
    if (this.state.need_close()) this.output(this.local.end);
  } while (!this.state.has_settled());
};
