import type { ReadCache } from "./controller.js";

/**
 * Several namespaces' caches read as one: what a cluster-wide informer's cache would hold if those namespaces were
 * the whole cluster. With `--watch-namespaces` the operator runs one informer per namespace and kind (it may not list
 * across namespaces), and the controllers read them through this, unchanged.
 *
 * Mirrors client-node's ObjectCache: `list()` without a namespace lists every namespace; `get()` without one looks
 * for a cluster-scoped object, and these kinds have none.
 */
export class NamespacedCache<T> implements ReadCache<T> {
  constructor(private readonly byNamespace: ReadonlyMap<string, ReadCache<T>>) {}

  get(name: string, namespace?: string): T | undefined {
    if (!namespace) return undefined;
    return this.byNamespace.get(namespace)?.get(name, namespace);
  }

  list(namespace?: string): T[] {
    if (namespace) return this.byNamespace.get(namespace)?.list(namespace) ?? [];
    return [...this.byNamespace.values()].flatMap((cache) => cache.list());
  }
}
