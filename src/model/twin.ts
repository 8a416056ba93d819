/** A twin's property collections, as devices and the service see them. */

export type TwinCollection = Record<string, unknown> & { $version?: number };

/** What a device sees of its twin: the two property collections with their `$version`. */
export interface TwinProperties {
  desired: TwinCollection;
  reported: TwinCollection;
}
