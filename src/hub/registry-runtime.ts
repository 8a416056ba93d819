import type { ConnectionState } from './types.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { NEVER } from './twin-doc.ts';

interface RuntimeState {
  connected: boolean;
  connectionStateUpdatedTime: string;
  lastActivityTime: string;
}

export interface RuntimeJson {
  connectionState: ConnectionState;
  connectionStateUpdatedTime: string;
  lastActivityTime: string;
}

function runtimeKey(deviceId: string, moduleId: string | undefined): string {
  return moduleId === undefined ? deviceId : `${deviceId}/${moduleId}`;
}

/** Who is connected and when they were last heard of; not persisted: after a restart nothing is connected. */
export class ConnectionStates {
  private readonly states = new Map<string, RuntimeState>();

  set(deviceId: string, moduleId: string | undefined, connected: boolean, now: string): void {
    const key = runtimeKey(deviceId, moduleId);
    const cur = this.states.get(key);
    if (cur && cur.connected === connected) {
      cur.lastActivityTime = now;
      return;
    }
    this.states.set(key, { connected, connectionStateUpdatedTime: now, lastActivityTime: now });
  }

  /** Marks activity of a device or module already known, without changing its connection state. */
  touch(deviceId: string, moduleId: string | undefined, now: () => string): void {
    const cur = this.states.get(runtimeKey(deviceId, moduleId));
    if (cur) cur.lastActivityTime = now();
  }

  isConnected(deviceId: string, moduleId: string | undefined): boolean {
    return this.states.get(runtimeKey(deviceId, moduleId))?.connected ?? false;
  }

  forget(deviceId: string, moduleId: string | undefined): void {
    this.states.delete(runtimeKey(deviceId, moduleId));
  }

  json(deviceId: string, moduleId: string | undefined): RuntimeJson {
    let r = this.states.get(runtimeKey(deviceId, moduleId));
    // A gateway connects as its $edgeHub module, never as the device itself: the device shows that link's state.
    const edgeHub = moduleId === undefined ? this.states.get(runtimeKey(deviceId, EDGE_HUB)) : undefined;
    if (edgeHub && (!r || (edgeHub.connected && !r.connected))) r = edgeHub;
    return {
      connectionState: r?.connected ? 'Connected' : 'Disconnected',
      connectionStateUpdatedTime: r?.connectionStateUpdatedTime ?? NEVER,
      lastActivityTime: r?.lastActivityTime ?? NEVER,
    };
  }
}
