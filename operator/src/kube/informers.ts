import {
  CoreV1Api,
  CustomObjectsApi,
  makeInformer,
  NetworkingV1Api,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  type V1NetworkPolicy,
  type V1PersistentVolumeClaim,
  type V1Pod,
  type V1ServiceAccount,
} from "@kubernetes/client-node";
import type { Logger } from "winston";
import { BUILDKITE_JOB, type BuildkiteJob } from "../api/generated/buildkite-job.js";
import { BUILDKITE_QUEUE, type BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { LABELS, MANAGED_BY } from "../api/keys.js";
import { LiveJobs } from "../capacity/live-jobs.js";
import type { Clock } from "./clock.js";
import type { Caches, ReadCache } from "./controller.js";
import { NamespacedCache } from "./namespaced-cache.js";
import { SupervisedInformer } from "./supervised-informer.js";

/** Fans one informer's changes out to every listener (controllers register theirs after the informers exist). */
export class Listeners<T> {
  private readonly fns: ((obj: T) => void)[] = [];
  add(fn: (obj: T) => void): void {
    this.fns.push(fn);
  }
  emit = (obj: T): void => {
    for (const fn of this.fns) fn(obj);
  };
}

/** The supervised informers of every kind the controllers read, their caches, and the listeners their changes go to. */
export interface InformerSet {
  caches: Caches;
  listeners: { [K in keyof InformerCaches]: Listeners<CacheItem<InformerCaches[K]>> };
  /** Every informer (one per kind, or one per kind and watched namespace): readiness covers them all. */
  all: SupervisedInformer<KubernetesObject>[];
}

type CacheItem<C> = C extends { list(namespace?: string): (infer T)[] } ? T : never;

/** The caches that come from an informer each (the live-jobs index is derived from two of them). */
type InformerCaches = Omit<Caches, "live">;

const OWNED = `${LABELS.managedBy}=${MANAGED_BY}`;
const JOB_PODS = `${OWNED},${LABELS.component}=job`;

/** A kind the operator watches: its collection in every namespace (no namespace) or in one. */
interface WatchedKind<T extends KubernetesObject> {
  name: string;
  path(namespace?: string): string;
  list(namespace?: string): Promise<KubernetesListObject<T>>;
  labelSelector?: string;
  slim?: (obj: T) => void;
}

/** `/prefix/plural`, or `/prefix/namespaces/<namespace>/plural`: a collection's path across namespaces or in one. */
const collection =
  (prefix: string, plural: string) =>
  (namespace?: string): string =>
    namespace ? `${prefix}/namespaces/${namespace}/${plural}` : `${prefix}/${plural}`;

/**
 * Creates the informers: the two custom resources, and the operator's own pods, ServiceAccounts, NetworkPolicies and
 * claims (label-selected, so the caches hold only what the operator made).
 *
 * With no `namespaces`, one informer per kind lists and watches every namespace (this needs a ClusterRole). With
 * `namespaces` (`--watch-namespaces`), one informer per kind and namespace lists and watches only that namespace, so a
 * Role in each is enough; each kind's informers are read as one cache and feed one set of listeners, so the
 * controllers cannot tell the two apart. Objects in other namespaces are never seen, so never acted on.
 */
export function createInformers(
  kc: KubeConfig,
  clock: Clock,
  logger: Logger,
  namespaces: readonly string[] = [],
): InformerSet {
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const networking = kc.makeApiClient(NetworkingV1Api);
  const scopes = [...new Set(namespaces)];
  const all: SupervisedInformer<KubernetesObject>[] = [];

  function supervise<T extends KubernetesObject>(
    kind: WatchedKind<T>,
    listeners: Listeners<T>,
    namespace?: string,
  ): SupervisedInformer<T> {
    const informer = new SupervisedInformer<T>({
      name: namespace ? `${kind.name}/${namespace}` : kind.name,
      clock,
      logger,
      onChange: listeners.emit,
      ...(kind.slim ? { slim: kind.slim } : {}),
      factory: () => makeInformer<T>(kc, kind.path(namespace), () => kind.list(namespace), kind.labelSelector),
    });
    all.push(informer as unknown as SupervisedInformer<KubernetesObject>);
    return informer;
  }
  function watch<T extends KubernetesObject>(kind: WatchedKind<T>): [ReadCache<T>, Listeners<T>] {
    const listeners = new Listeners<T>();
    if (scopes.length === 0) return [supervise(kind, listeners), listeners];
    return [new NamespacedCache(new Map(scopes.map((ns) => [ns, supervise(kind, listeners, ns)]))), listeners];
  }
  const customKind = <T extends KubernetesObject>(
    c: typeof BUILDKITE_QUEUE | typeof BUILDKITE_JOB,
  ): WatchedKind<T> => ({
    name: c.plural,
    path: collection(`/apis/${c.group}/${c.version}`, c.plural),
    list: async (namespace) =>
      (await (namespace
        ? custom.listNamespacedCustomObject({ group: c.group, version: c.version, namespace, plural: c.plural })
        : custom.listClusterCustomObject({
            group: c.group,
            version: c.version,
            plural: c.plural,
          }))) as KubernetesListObject<T>,
  });

  const [queues, queueListeners] = watch(customKind<BuildkiteQueue>(BUILDKITE_QUEUE));
  const [jobs, jobListeners] = watch(customKind<BuildkiteJob>(BUILDKITE_JOB));
  const [pods, podListeners] = watch<V1Pod>({
    name: "pods",
    path: collection("/api/v1", "pods"),
    labelSelector: JOB_PODS,
    slim: slimPod,
    list: (namespace) =>
      namespace
        ? core.listNamespacedPod({ namespace, labelSelector: JOB_PODS })
        : core.listPodForAllNamespaces({ labelSelector: JOB_PODS }),
  });
  const [serviceAccounts, saListeners] = watch<V1ServiceAccount>({
    name: "serviceaccounts",
    path: collection("/api/v1", "serviceaccounts"),
    labelSelector: OWNED,
    list: (namespace) =>
      namespace
        ? core.listNamespacedServiceAccount({ namespace, labelSelector: OWNED })
        : core.listServiceAccountForAllNamespaces({ labelSelector: OWNED }),
  });
  const [networkPolicies, npListeners] = watch<V1NetworkPolicy>({
    name: "networkpolicies",
    path: collection("/apis/networking.k8s.io/v1", "networkpolicies"),
    labelSelector: OWNED,
    list: (namespace) =>
      namespace
        ? networking.listNamespacedNetworkPolicy({ namespace, labelSelector: OWNED })
        : networking.listNetworkPolicyForAllNamespaces({ labelSelector: OWNED }),
  });
  const [claims, claimListeners] = watch<V1PersistentVolumeClaim>({
    name: "persistentvolumeclaims",
    path: collection("/api/v1", "persistentvolumeclaims"),
    labelSelector: OWNED,
    list: (namespace) =>
      namespace
        ? core.listNamespacedPersistentVolumeClaim({ namespace, labelSelector: OWNED })
        : core.listPersistentVolumeClaimForAllNamespaces({ labelSelector: OWNED }),
  });

  // Indexed before any controller's listener runs: a controller woken by a change reads the index with it.
  const live = new LiveJobs(jobs, pods);
  jobListeners.add((j) => {
    live.changed(j.metadata.namespace ?? "", j.metadata.name ?? "");
  });
  podListeners.add((p) => {
    const job = p.metadata?.labels?.[LABELS.job];
    if (job !== undefined) live.changed(p.metadata?.namespace ?? "", job);
  });

  return {
    caches: { queues, jobs, pods, serviceAccounts, networkPolicies, claims, live },
    listeners: {
      queues: queueListeners,
      jobs: jobListeners,
      pods: podListeners,
      serviceAccounts: saListeners,
      networkPolicies: npListeners,
      claims: claimListeners,
    },
    all,
  };
}

/**
 * What the controllers read of a job pod is its identity, owner, node, image, claims and status; its other volumes,
 * env and security settings (the bulk of the object) are the operator's own output and never read back, so the cache
 * drops them. With thousands of jobs in flight this is most of the operator's memory.
 */
export function slimPod(pod: V1Pod): void {
  const spec = pod.spec;
  if (!spec) return;
  // Claim volumes stay (a name each): the queue controller never deletes a cache claim a pod still mounts.
  const claims = spec.volumes?.flatMap((v) =>
    v.persistentVolumeClaim ? [{ name: v.name, persistentVolumeClaim: v.persistentVolumeClaim }] : [],
  );
  delete spec.volumes;
  if (claims !== undefined && claims.length > 0) spec.volumes = claims;
  delete spec.securityContext;
  delete spec.tolerations;
  delete spec.affinity;
  for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
    delete c.env;
    delete c.envFrom;
    delete c.volumeMounts;
    delete c.securityContext;
    delete c.lifecycle;
    delete c.args;
    delete c.resources;
  }
  if (pod.metadata) delete pod.metadata.annotations;
}
