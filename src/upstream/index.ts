/**
 * The upstream folder as a gateway uses it: the two links to the parent behind one contract,
 * and the errors they report. See README.md for how the parts fit.
 */
export { AmqpParentLink, type AmqpParentLinkOptions } from './amqp-parent-link.ts';
export { MqttParentLink, type MqttParentLinkOptions } from './mqtt-parent-link.ts';
export { directChildChain } from './parent-link.ts';
export type {
  DirectTelemetry,
  ParentLink,
  ParentLinkStatus,
  UpstreamC2DDelivery,
  UpstreamEndpoint,
  UpstreamIdentity,
} from './parent-link.ts';
export {
  UpstreamDownError,
  UpstreamError,
  isPermanentForMessage,
  isUpstreamDown,
  twinRefusal,
  type SendOutcome,
} from './errors.ts';
export type { TelemetryEndpointMetrics } from './telemetry-endpoint.ts';
export { UpstreamConnectError, type UpstreamTransport } from './transport.ts';
