import type { KeySource } from "./kubelet-env.js";

/** Secrets and ConfigMaps held in memory, as the API server would serve them (decoded). */
export function memoryKeys(
  secrets: Record<string, Record<string, string>>,
  configMaps: Record<string, Record<string, string>> = {},
): KeySource {
  const keys = (object: Record<string, string> | undefined): Map<string, Buffer> | undefined =>
    object && new Map(Object.entries(object).map(([k, v]) => [k, Buffer.from(v)]));
  return {
    secret: (name) => Promise.resolve(keys(secrets[name])),
    configMap: (name) => Promise.resolve(keys(configMaps[name])),
  };
}
