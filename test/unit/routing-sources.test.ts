/** Route sources must be ones a message can come from (issue 17, finding 5). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { routeTableFromEdgeHubDesired } from '../../src/routing/route-table.ts';

describe('route sources (issue 17, finding 5)', () => {
  const compile = (route: string) =>
    routeTableFromEdgeHubDesired({
      schemaVersion: '1.1',
      routes: { r: route },
      storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
    });

  it('every source a message can come from compiles', () => {
    for (const src of [
      '/*',
      '/messages',
      '/messages/*',
      '/Messages/Modules/*',
      '/messages/modules/m1',
      '/messages/modules/m1/*',
      '/messages/modules/m1/outputs/*',
      '/messages/modules/m1/outputs/o1',
      '/twinChangeNotifications',
    ]) {
      assert.doesNotThrow(() => compile(`FROM ${src} INTO $upstream`), src);
    }
  });

  it('a source no message comes from is refused, naming the route and the source', () => {
    for (const src of [
      '/nowhere',
      '/messagesx',
      '/messages/devices',
      '/messages/modules/m1/inputs/i',
      '/twinChangeNotifications/x',
      '/*/messages',
      '/messages/*/outputs',
    ]) {
      assert.throws(
        () => compile(`FROM ${src} INTO $upstream`),
        new RegExp(`route "r": position 6: source "${src.replace(/[*/]/g, '\\$&')}" `),
        src,
      );
    }
  });
});
