import type { V1Secret } from "@kubernetes/client-node";
import type winston from "winston";
import { isNotFound } from "../../operator/src/kube/field-manager.js";
import { realClock } from "../../operator/src/kube/clock.js";
import { SupervisedInformer } from "../../operator/src/kube/supervised-informer.js";
import type { KubeRaw } from "./kube-raw.js";
import { LeanInformer } from "./lean-informer.js";

/** A Secret the watch has not shown yet: the pod waits for it rather than costing the API server a read. */
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
 * resourceVersion. A job's token Secret is created just before its pod, and the pod's watch may show the pod first:
 * a reader then waits for the Secret's watch (woken by `onArrived` when it shows the Secret) instead of reading it
 * live, which a burst of jobs would pay one GET each for. Only a reader that has waited long enough reads live.
 */
export class SecretCache {
  readonly #informers = new Map<string, SupervisedInformer<V1Secret>>();
  readonly #decoded = new Map<string, { rv: string | undefined; value: string | undefined }>();
  /** `namespace/name` of a Secret not yet seen → the keys of the pods waiting for it. */
  readonly #waiting = new Map<string, Set<string>>();

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
   * A Secret's key; undefined if the Secret or the key does not exist. Not in the watch's cache: with `live`, read
   * from the API server; otherwise {@link SecretNotCached} is thrown and `waiter` is remembered for `onArrived`.
   */
  async read(
    namespace: string,
    name: string,
    key: string,
    how: { live: boolean; waiter: string },
  ): Promise<string | undefined> {
    let secret = this.#informers.get(namespace)?.get(name, namespace);
    if (!secret && !how.live) {
      const id = `${namespace}/${name}`;
      const waiters = this.#waiting.get(id) ?? new Set<string>();
      this.#waiting.set(id, waiters.add(how.waiter));
      throw new SecretNotCached(namespace, name);
    }
    if (!secret) {
      try {
        secret = (await this.kube.get(`/api/v1/namespaces/${namespace}/secrets/${name}`)) as V1Secret;
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
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
