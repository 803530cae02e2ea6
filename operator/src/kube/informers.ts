import {
  CoreV1Api, CustomObjectsApi, makeInformer, NetworkingV1Api,
  type KubeConfig, type KubernetesListObject, type KubernetesObject,
  type V1NetworkPolicy, type V1PersistentVolumeClaim, type V1Pod, type V1ServiceAccount,
} from "@kubernetes/client-node";
import type { Logger } from "winston";
import { BUILDKITE_JOB, type BuildkiteJob } from "../api/generated/buildkite-job.js";
import { BUILDKITE_QUEUE, type BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { LABELS, MANAGED_BY } from "../api/keys.js";
import type { Clock } from "./clock.js";
import type { Caches } from "./controller.js";
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

/** One supervised informer per kind the controllers read, and the listeners their changes go to. */
export interface InformerSet {
  caches: Caches;
  listeners: { [K in keyof Caches]: Listeners<CacheItem<Caches[K]>> };
  all: SupervisedInformer<KubernetesObject>[];
}

type CacheItem<C> = C extends { list(namespace?: string): (infer T)[] } ? T : never;

const OWNED = `${LABELS.managedBy}=${MANAGED_BY}`;
const JOB_PODS = `${OWNED},${LABELS.component}=job`;

/**
 * Creates the informers over every namespace: the two custom resources, and the operator's own pods,
 * ServiceAccounts, NetworkPolicies and claims (label-selected, so the caches hold only what the operator made).
 */
export function createInformers(kc: KubeConfig, clock: Clock, logger: Logger): InformerSet {
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const networking = kc.makeApiClient(NetworkingV1Api);
  const all: SupervisedInformer<KubernetesObject>[] = [];

  function supervise<T extends KubernetesObject>(name: string, path: string, list: () => Promise<KubernetesListObject<T>>, labelSelector?: string,
    slim?: (obj: T) => void): [SupervisedInformer<T>, Listeners<T>] {
    const listeners = new Listeners<T>();
    const informer = new SupervisedInformer<T>({
      name, clock, logger, onChange: listeners.emit, ...(slim ? { slim } : {}),
      factory: () => makeInformer<T>(kc, path, list, labelSelector),
    });
    all.push(informer as unknown as SupervisedInformer<KubernetesObject>);
    return [informer, listeners];
  }
  const crdPath = (c: typeof BUILDKITE_QUEUE | typeof BUILDKITE_JOB): string => `/apis/${c.group}/${c.version}/${c.plural}`;
  const listCustom = <T extends KubernetesObject>(c: typeof BUILDKITE_QUEUE | typeof BUILDKITE_JOB) => async (): Promise<KubernetesListObject<T>> =>
    await custom.listClusterCustomObject({ group: c.group, version: c.version, plural: c.plural }) as KubernetesListObject<T>;

  const [queues, queueListeners] = supervise<BuildkiteQueue>("buildkitequeues", crdPath(BUILDKITE_QUEUE), listCustom(BUILDKITE_QUEUE));
  const [jobs, jobListeners] = supervise<BuildkiteJob>("buildkitejobs", crdPath(BUILDKITE_JOB), listCustom(BUILDKITE_JOB));
  const [pods, podListeners] = supervise<V1Pod>("pods", "/api/v1/pods", () => core.listPodForAllNamespaces({ labelSelector: JOB_PODS }), JOB_PODS, slimPod);
  const [serviceAccounts, saListeners] = supervise<V1ServiceAccount>("serviceaccounts", "/api/v1/serviceaccounts",
    () => core.listServiceAccountForAllNamespaces({ labelSelector: OWNED }), OWNED);
  const [networkPolicies, npListeners] = supervise<V1NetworkPolicy>("networkpolicies", "/apis/networking.k8s.io/v1/networkpolicies",
    () => networking.listNetworkPolicyForAllNamespaces({ labelSelector: OWNED }), OWNED);
  const [claims, claimListeners] = supervise<V1PersistentVolumeClaim>("persistentvolumeclaims", "/api/v1/persistentvolumeclaims",
    () => core.listPersistentVolumeClaimForAllNamespaces({ labelSelector: OWNED }), OWNED);

  return {
    caches: { queues, jobs, pods, serviceAccounts, networkPolicies, claims },
    listeners: { queues: queueListeners, jobs: jobListeners, pods: podListeners, serviceAccounts: saListeners, networkPolicies: npListeners, claims: claimListeners },
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
  const claims = spec.volumes?.flatMap((v) => v.persistentVolumeClaim ? [{ name: v.name, persistentVolumeClaim: v.persistentVolumeClaim }] : []);
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
