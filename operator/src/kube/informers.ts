import {
  KubernetesObjectApi,
  makeInformer,
  type Informer,
  type KubeConfig,
  type KubernetesObject,
  type ObjectCache,
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
import { leanTransport } from "./lean-client.js";
import { LeanInformer } from "./lean-informer.js";
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
  /** The kind's apiVersion and kind: what the fallback through a proxy lists by. */
  apiVersion: string;
  kind: string;
  path(namespace?: string): string;
  labelSelector?: string;
  slim?: (obj: T) => void;
}

/**
 * Makes the informer of a kind in every namespace or in one. The lean list-and-watch (lean-informer.ts) on the
 * operator's own transport; through a proxy (`proxy-url`), which that transport does not speak, client-node's
 * informer, listing with its generic object client.
 */
function informerMaker(
  kc: KubeConfig,
): <T extends KubernetesObject>(kind: WatchedKind<T>, namespace?: string) => Informer<T> & ObjectCache<T> {
  const transport = leanTransport(kc);
  if (transport)
    return (kind, namespace) =>
      new LeanInformer(transport, kind.path(namespace), {
        ...(kind.labelSelector === undefined ? {} : { labelSelector: kind.labelSelector }),
      });
  const objects = KubernetesObjectApi.makeApiClient(kc);
  return <T extends KubernetesObject>(kind: WatchedKind<T>, namespace?: string) =>
    makeInformer<T>(
      kc,
      kind.path(namespace),
      () =>
        objects.list<T>(
          kind.apiVersion,
          kind.kind,
          namespace,
          undefined,
          undefined,
          undefined,
          undefined,
          kind.labelSelector,
        ),
      kind.labelSelector,
    );
}

/** `/prefix/plural`, or `/prefix/namespaces/<namespace>/plural`: a collection's path across namespaces or in one. */
const collection =
  (prefix: string, plural: string) =>
  (namespace?: string): string =>
    namespace ? `${prefix}/namespaces/${namespace}/${plural}` : `${prefix}/${plural}`;

/**
 * Creates the informers: the two custom resources, and the operator's own pods, ServiceAccounts, NetworkPolicies and
 * claims (label-selected, so the caches hold only what the operator made). Cached objects are plain JSON as the API
 * server sent them: date-time fields are ISO strings, not the `Date`s client-node's model types declare.
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
  const makeInformerOf = informerMaker(kc);
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
      // Applied by the supervisor to each object it is told of, so the informer itself caches objects unchanged.
      ...(kind.slim ? { slim: kind.slim } : {}),
      factory: () => makeInformerOf(kind, namespace),
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
    apiVersion: `${c.group}/${c.version}`,
    kind: c.kind,
    path: collection(`/apis/${c.group}/${c.version}`, c.plural),
  });

  const [queues, queueListeners] = watch(customKind<BuildkiteQueue>(BUILDKITE_QUEUE));
  const [jobs, jobListeners] = watch(customKind<BuildkiteJob>(BUILDKITE_JOB));
  const [pods, podListeners] = watch<V1Pod>({
    name: "pods",
    apiVersion: "v1",
    kind: "Pod",
    path: collection("/api/v1", "pods"),
    labelSelector: JOB_PODS,
    slim: slimPod,
  });
  const [serviceAccounts, saListeners] = watch<V1ServiceAccount>({
    name: "serviceaccounts",
    apiVersion: "v1",
    kind: "ServiceAccount",
    path: collection("/api/v1", "serviceaccounts"),
    labelSelector: OWNED,
  });
  const [networkPolicies, npListeners] = watch<V1NetworkPolicy>({
    name: "networkpolicies",
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    path: collection("/apis/networking.k8s.io/v1", "networkpolicies"),
    labelSelector: OWNED,
  });
  const [claims, claimListeners] = watch<V1PersistentVolumeClaim>({
    name: "persistentvolumeclaims",
    apiVersion: "v1",
    kind: "PersistentVolumeClaim",
    path: collection("/api/v1", "persistentvolumeclaims"),
    labelSelector: OWNED,
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
