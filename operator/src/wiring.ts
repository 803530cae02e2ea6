import { CoordinationV1Api, CoreV1Api, KubeConfig, type KubernetesObject } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { BuildkiteJob } from "./api/generated/buildkite-job.js";
import { LABELS } from "./api/keys.js";
import { COUNTS_WRITE_INTERVAL_MS } from "./queue/status.js";
import { type Clock } from "./kube/clock.js";
import type { Controller, ControllerContext } from "./kube/controller.js";
import { type InformerSet } from "./kube/informers.js";
import { LeaderElector } from "./kube/leader-election.js";
import { NotLeaderError } from "./kube/write-guard.js";
import { keyOf } from "./kube/resources.js";
import { Metrics } from "./observability/metrics.js";
import { WorkQueue } from "./kube/work-queue.js";
import type { LeaderElectionSettings } from "./operator.js";

/** The operator's wiring: work queues, informer callbacks, the elector's own KubeConfig, request hooks. */

export function workQueueFor(
  controller: Controller,
  ctx: ControllerContext,
): { queue: WorkQueue; start(workers: number): void } {
  const { clock, logger, metrics, mayAct } = ctx;
  const queue = new WorkQueue({
    name: controller.name,
    clock,
    startProblem: () =>
      mayAct?.() === false
        ? new NotLeaderError(`not the leader: did not start a ${controller.name} reconcile`)
        : undefined,
    onDone: ({ key, error, retries, durationMs }) => {
      metrics.reconciled(controller.name, durationMs, error !== undefined);
      if (error !== undefined) {
        logger.warn("Reconcile failed; retrying with backoff", {
          controller: controller.name,
          key,
          retries,
          error: describeError(error),
        });
      }
    },
  });
  return {
    queue,
    start: (workers) => {
      queue.start(workers, (key) => controller.reconcile(key));
    },
  };
}

/** Maps every change to the keys it concerns. Callbacks only enqueue; the reconcilers read the caches. */
export function wire(informers: InformerSet, queueWork: WorkQueue, jobWork: WorkQueue): void {
  const { caches, listeners } = informers;
  const queueKey = (namespace: string | undefined, name: string | undefined): string =>
    `${namespace ?? ""}/${name ?? ""}`;
  // Jobs of a queue waiting for their pod: on the queue's readiness or for a free slot (an index, not a scan).
  const wakeJobs = (namespace: string | undefined, queue: string | undefined): void => {
    if (namespace === undefined || queue === undefined) return;
    for (const job of caches.live.waiting(namespace, queue)) jobWork.add(keyOf(job));
  };
  const byQueueLabel = (o: KubernetesObject): void => {
    const queue = o.metadata?.labels?.[LABELS.queue];
    if (queue) queueWork.add(queueKey(o.metadata?.namespace, queue));
  };

  listeners.queues.add((q) => {
    queueWork.add(keyOf(q));
    wakeJobs(q.metadata.namespace, q.metadata.name);
  });
  listeners.jobs.add((j: BuildkiteJob) => {
    jobWork.add(keyOf(j));
    // A job's change only moves its queue's counts, written at most once a second: one reconcile per second does.
    queueWork.addAfter(queueKey(j.metadata.namespace, j.spec.queueRef.name), COUNTS_WRITE_INTERVAL_MS);
    wakeJobs(j.metadata.namespace, j.spec.queueRef.name);
  });
  listeners.pods.add((p) => {
    const job = p.metadata?.labels?.[LABELS.job];
    if (job) jobWork.add(queueKey(p.metadata?.namespace, job));
    wakeJobs(p.metadata?.namespace, p.metadata?.labels?.[LABELS.queue]);
  });
  listeners.serviceAccounts.add(byQueueLabel);
  listeners.networkPolicies.add(byQueueLabel);
  listeners.claims.add(byQueueLabel);
}

/** A copy of `kc` that can be hooked without touching the original. */
export function copyOf(kc: KubeConfig): KubeConfig {
  const copy = new KubeConfig();
  copy.loadFromOptions({
    clusters: kc.clusters,
    users: kc.users,
    contexts: kc.contexts,
    currentContext: kc.currentContext,
  });
  return copy;
}

/** The elector, on a KubeConfig of its own: its Lease requests are counted, but never refused by the write guard. */
export function leaderElector(
  le: LeaderElectionSettings,
  kubeConfig: KubeConfig,
  clock: Clock,
  logger: Logger,
  metrics: Metrics,
): LeaderElector {
  const kc = copyOf(kubeConfig);
  countRequests(kc, metrics);
  reuseConnections(kc);
  return new LeaderElector({
    client: kc.makeApiClient(CoordinationV1Api),
    namespace: le.namespace,
    name: le.name,
    identity: le.identity,
    clock,
    logger,
    ...(le.leaseDurationMs !== undefined ? { leaseDurationMs: le.leaseDurationMs } : {}),
  });
}

/** Counts every Kubernetes API request (each passes through the KubeConfig's authentication) in the metrics. */
export function countRequests(kc: KubeConfig, metrics: Metrics): void {
  const authenticate = kc.applySecurityAuthentication.bind(kc);
  kc.applySecurityAuthentication = async (context) => {
    metrics.kubernetesRequest(context.getHttpMethod());
    await authenticate(context);
  };
}

/**
 * client-node 2.x builds a new undici Agent for every request, so every request opens (and TLS-handshakes) a new
 * connection: most of the operator's CPU, and the API server's, went there under load. One dispatcher per KubeConfig
 * (one cluster, one user) keeps connections alive. Client certificates are read once; bearer tokens are headers and
 * still refresh per request.
 */
export function reuseConnections(kc: KubeConfig): void {
  const patched = kc as unknown as { createDispatcher(cluster: unknown, options: unknown): unknown };
  const create = patched.createDispatcher.bind(kc);
  let shared: unknown;
  patched.createDispatcher = (cluster, options) => (shared ??= create(cluster, options));
}

/** The uid of the kube-system namespace: stable for a cluster's life and different in every cluster. */
export async function clusterUid(core: CoreV1Api): Promise<string> {
  const ns = await core.readNamespace({ name: "kube-system" });
  return ns.metadata?.uid ?? "unknown-cluster";
}

/** Why the informers' caches cannot be trusted now (not synced, failed or stale), or undefined. */
export function informerProblem(informers: InformerSet): string | undefined {
  const unhealthy = informers.all.filter((i) => !i.healthy()).map((i) => i.name);
  return unhealthy.length === 0 ? undefined : `informers not synced or stale: ${unhealthy.join(", ")}`;
}

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error);
}
