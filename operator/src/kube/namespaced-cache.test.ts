import type { KubernetesObject } from "@kubernetes/client-node";
import { expect } from "chai";
import type { ReadCache } from "./controller.js";
import { NamespacedCache } from "./namespaced-cache.js";

const obj = (namespace: string, name: string): KubernetesObject => ({ metadata: { namespace, name } });

/** One namespace's cache, as a per-namespace informer holds it. */
function cacheOf(...objects: KubernetesObject[]): ReadCache<KubernetesObject> {
  return {
    get: (name, namespace) => objects.find((o) => o.metadata?.name === name && o.metadata.namespace === namespace),
    list: (namespace) => objects.filter((o) => !namespace || o.metadata?.namespace === namespace),
  };
}

describe("NamespacedCache", () => {
  const cache = new NamespacedCache(
    new Map([
      ["ci", cacheOf(obj("ci", "a"), obj("ci", "b"))],
      ["ci-arm", cacheOf(obj("ci-arm", "a"))],
    ]),
  );
  const names = (objects: KubernetesObject[]): string[] =>
    objects.map((o) => `${o.metadata?.namespace ?? ""}/${o.metadata?.name ?? ""}`);

  it("gets an object from its namespace's cache", () => {
    expect(cache.get("a", "ci-arm")).to.deep.equal(obj("ci-arm", "a"));
    expect(cache.get("b", "ci")).to.deep.equal(obj("ci", "b"));
    expect(cache.get("b", "ci-arm")).to.equal(undefined);
  });

  it("holds nothing of a namespace it does not watch, and no cluster-scoped objects", () => {
    expect(cache.get("a", "kube-system")).to.equal(undefined);
    expect(cache.list("kube-system")).to.deep.equal([]);
    expect(cache.get("a")).to.equal(undefined);
  });

  it("lists one namespace, or every watched namespace without one (as a cluster-wide cache would)", () => {
    expect(names(cache.list("ci"))).to.deep.equal(["ci/a", "ci/b"]);
    expect(names(cache.list())).to.deep.equal(["ci/a", "ci/b", "ci-arm/a"]);
    expect(names(cache.list(""))).to.deep.equal(["ci/a", "ci/b", "ci-arm/a"]);
  });
});
