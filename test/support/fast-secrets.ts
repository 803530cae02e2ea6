import type { V1Secret } from "@kubernetes/client-node";
import type winston from "winston";
import { isNotFound } from "../../operator/src/kube/field-manager.js";
import { LeanInformer } from "../../operator/src/kube/lean-informer.js";
import { realClock } from "../../operator/src/kube/clock.js";
import { SupervisedInformer } from "../../operator/src/kube/supervised-informer.js";
import type { KubeRaw } from "./kube-raw.js";

/** A Secret the watch has not shown (yet): the pod waits for it, as a kubelet waits for a Secret it lacks. */
export class SecretNotCached extends Error {
  override name = "SecretNotCached";
  constructor(
    readonly namespace: string,
    readonly secret: string,
  ) {
    super(`Secret ${namespace}/${secret} is not in the watch's cache yet`);
  }
}

/**
 * The Secrets {@link FastRunner} reads the agent token from, from a watch per namespace, each key decoded once per
 * resourceVersion. A Secret not in the cache is waited for, the reader woken by `onArrived` when the watch shows it:
 * either the watch lags (the pod's watch showed the pod first), or the Secret does not exist yet (this operator may
 * create a job's pod before its token Secret; a kubelet holds such a container in CreateContainerConfigError until the
 * Secret exists). Neither is worth a GET per pod; only a watch that lags for long is checked with a live read.
 */
export class SecretCache {
  readonly #informers = new Map<string, SupervisedInformer<V1Secret>>();
  readonly #decoded = new Map<string, { rv: string | undefined; value: string | undefined }>();
  /** `namespace/name` of a Secret not yet seen → the keys of the pods waiting for it. */
  readonly #waiting = new Map<string, Set<string>>();
  /** Per namespace, the highest resourceVersion the watch has delivered. */
  readonly #reached = new Map<string, number>();

  constructor(
    private readonly kube: KubeRaw,
    namespaces: readonly string[],
    logger: winston.Logger,
    onArrived: (waiters: ReadonlySet<string>) => void,
  ) {
    for (const namespace of namespaces)
      this.#informers.set(
        namespace,
        new SupervisedInformer<V1Secret>({
          name: `secrets/${namespace}`,
          clock: realClock,
          logger,
          onChange: (secret) => {
            const rv = Number(secret.metadata?.resourceVersion);
            if (rv > (this.#reached.get(namespace) ?? 0)) this.#reached.set(namespace, rv);
            const id = `${namespace}/${secret.metadata?.name ?? ""}`;
            const waiters = this.#waiting.get(id);
            if (!waiters) return;
            this.#waiting.delete(id);
            onArrived(waiters);
          },
          factory: () => new LeanInformer<V1Secret>(kube, `/api/v1/namespaces/${namespace}/secrets`),
        }),
      );
  }

  informers(): SupervisedInformer<V1Secret>[] {
    return [...this.#informers.values()];
  }

  /**
   * Whether the watch has delivered every Secret change up to `resourceVersion` (a pod's): then a Secret it lacks did
   * not exist at that point, and reading it live would only confirm that. Watch events come in resourceVersion order,
   * and this harness's API servers store every kind in one etcd, whose revisions are the resourceVersions: numbers
   * that order changes across kinds (Kubernetes calls them opaque; a test cluster may rely on what they are).
   */
  reached(namespace: string, resourceVersion: string | undefined): boolean {
    const rv = Number(resourceVersion);
    return Number.isFinite(rv) && (this.#reached.get(namespace) ?? 0) >= rv;
  }

  /**
   * A Secret's key; undefined if the key does not exist. A Secret not in the watch's cache is read live with `live`,
   * or when the reference is `optional` (the container starts without it if it does not exist: a rare case, not worth
   * waiting for). One not there either is undefined if optional; otherwise {@link SecretNotCached} is thrown and
   * `waiter` is remembered for `onArrived`.
   */
  async read(
    namespace: string,
    name: string,
    key: string,
    how: { live: boolean; optional: boolean; waiter: string },
  ): Promise<string | undefined> {
    let secret = this.#informers.get(namespace)?.get(name, namespace);
    if (!secret && (how.live || how.optional)) {
      try {
        secret = (await this.kube.get(`/api/v1/namespaces/${namespace}/secrets/${name}`)) as V1Secret;
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    if (!secret && how.optional) return undefined;
    if (!secret) {
      const id = `${namespace}/${name}`;
      const waiters = this.#waiting.get(id) ?? new Set<string>();
      this.#waiting.set(id, waiters.add(how.waiter));
      throw new SecretNotCached(namespace, name);
    }
    const id = `${namespace}/${name}/${key}`;
    const rv = secret.metadata?.resourceVersion;
    const cached = this.#decoded.get(id);
    if (cached && cached.rv === rv) return cached.value;
    const data = secret.data?.[key];
    const value = data === undefined ? undefined : Buffer.from(data, "base64").toString("utf8");
    this.#decoded.set(id, { rv, value });
    return value;
  }
}
