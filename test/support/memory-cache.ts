import type { ReadCache } from "../../operator/src/kube/controller.js";

/** An informer cache that holds whatever `objects()` returns when it is read, for unit tests of cache readers. */
export function memoryCache<T extends { metadata?: { name?: string; namespace?: string } }>(
  objects: () => readonly T[],
): ReadCache<T> {
  return {
    get: (name, namespace) => objects().find((o) => o.metadata?.name === name && o.metadata.namespace === namespace),
    list: (namespace) => objects().filter((o) => namespace === undefined || o.metadata?.namespace === namespace),
  };
}
