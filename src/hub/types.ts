/**
 * The JSON shapes of IoT Hub's service API, as the official service SDKs send and parse them.
 * Type aliases (not interfaces) so they also fit `Record<string, unknown>` consumers.
 */

export type ConnectionState = 'Connected' | 'Disconnected';

export type AuthenticationJson = {
  type: 'sas' | 'selfSigned' | 'certificateAuthority' | 'none';
  symmetricKey: { primaryKey: string | null; secondaryKey: string | null };
  x509Thumbprint: { primaryThumbprint: string | null; secondaryThumbprint: string | null };
};

export type DeviceJson = {
  deviceId: string;
  generationId: string;
  etag: string;
  connectionState: ConnectionState;
  status: 'enabled' | 'disabled';
  statusReason: string | null;
  connectionStateUpdatedTime: string;
  statusUpdatedTime: string;
  lastActivityTime: string;
  cloudToDeviceMessageCount: number;
  authentication: AuthenticationJson;
  capabilities: { iotEdge: boolean };
  /** An edge device's own scope, or a leaf's parent scope; '' when none. */
  deviceScope: string;
  parentScopes: string[];
};

export type ModuleJson = {
  moduleId: string;
  managedBy: string;
  deviceId: string;
  generationId: string;
  etag: string;
  connectionState: ConnectionState;
  connectionStateUpdatedTime: string;
  lastActivityTime: string;
  cloudToDeviceMessageCount: number;
  authentication: AuthenticationJson;
};

/** desired or reported, with `$metadata` and `$version` beside the properties. */
export type TwinPropertiesJson = Record<string, unknown> & { $metadata: Record<string, unknown>; $version: number };

export type TwinJson = {
  deviceId: string;
  moduleId?: string;
  etag: string;
  deviceEtag: string;
  status: 'enabled' | 'disabled';
  statusReason?: string | null;
  statusUpdateTime: string;
  connectionState: ConnectionState;
  lastActivityTime: string;
  cloudToDeviceMessageCount: number;
  authenticationType: AuthenticationJson['type'];
  x509Thumbprint: AuthenticationJson['x509Thumbprint'];
  modelId: string;
  version: number;
  tags: Record<string, unknown>;
  properties: { desired: TwinPropertiesJson; reported: TwinPropertiesJson };
  capabilities?: { iotEdge: boolean };
  deviceScope?: string;
  parentScopes?: string[];
};

export type BulkResultJson = {
  isSuccessful: boolean;
  errors: Array<{ deviceId: string; errorCode: string; errorStatus: string }>;
  warnings: Array<{ deviceId: string; warningCode: string; warningStatus: string }>;
};

export type IdentityChange = 'created' | 'updated' | 'deleted';
