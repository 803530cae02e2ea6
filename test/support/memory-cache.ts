import type { V1Pod } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../../operator/src/api/generated/buildkite-job.js";
import { awaitsPod, isLive } from "../../operator/src/capacity/live-jobs.js";
import type { Caches, LiveJobsView, ReadCache } from "../../operator/src/kube/controller.js";

/** An informer cache that holds whatever `objects()` returns when it is read, for unit tests of cache readers. */
export function memoryCache<T extends { metadata?: { name?: string; namespace?: string } }>(
  objects: () => readonly T[],
): ReadCache<T> {
  return {
    get: (name, namespace) => objects().find((o) => o.metadata?.name === name && o.metadata.namespace === namespace),
    list: (namespace) => objects().filter((o) => namespace === undefined || o.metadata?.namespace === namespace),
  };
}

/** The live-jobs index over whatever `jobs()` and `pods()` return when it is read, by the operator's own rules. */
export function memoryLive(jobs: () => readonly BuildkiteJob[], pods: () => readonly V1Pod[]): LiveJobsView {
  const ofQueue = (namespace: string, queue: string): BuildkiteJob[] =>
    jobs().filter((j) => j.metadata.namespace === namespace && j.spec.queueRef.name === queue);
  const hasPod = (j: BuildkiteJob): boolean =>
    pods().some((p) => p.metadata?.name === j.metadata.name && p.metadata?.namespace === j.metadata.namespace);
  return {
    of: (namespace, queue) => ofQueue(namespace, queue).filter((j) => isLive(j, hasPod(j))),
    waiting: (namespace, queue) => ofQueue(namespace, queue).filter(awaitsPod),
  };
}

/** The job and pod caches and their live-jobs index, over whatever `jobs()` and `pods()` return when read. */
export function memoryJobCaches(
  jobs: () => readonly BuildkiteJob[],
  pods: () => readonly V1Pod[],
): Pick<Caches, "jobs" | "pods" | "live"> {
  return { jobs: memoryCache(jobs), pods: memoryCache(pods), live: memoryLive(jobs, pods) };
}
