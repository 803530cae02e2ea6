import { CoreV1Api, CustomObjectsApi, KubernetesObjectApi, type KubeConfig, type KubernetesObject } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { BuildkiteJob } from "./api/generated/buildkite-job.js";
import { LABELS } from "./api/keys.js";
import { JobController } from "./job/controller.js";
import { isTerminal } from "./job/phase.js";
import { realClock, type Clock } from "./kube/clock.js";
import type { Controller, ControllerContext } from "./kube/controller.js";
import { EventRecorder } from "./kube/event-recorder.js";
import { createInformers, type InformerSet } from "./kube/informers.js";
import { keyOf } from "./kube/resources.js";
import { WorkQueue } from "./kube/work-queue.js";
import { QueueController } from "./queue/controller.js";
import { DEFAULT_JOB_SOURCE_SETTINGS, type JobSourceSettings } from "./queue/job-source.js";
import { JobSources } from "./queue/job-sources.js";
import { NO_STACKS } from "./buildkite/stack-directory.js";
import { DEFAULT_START_TIMEOUTS, type StartTimeouts } from "./job/stuck.js";

export interface OperatorOptions {
  kubeConfig: KubeConfig;
  logger: Logger;
  clock?: Clock;
  /** Concurrent reconciles per controller (a key is never handled by two at once). */
  workers?: number;
  /** How long start-up waits for the informers' first lists. */
  syncTimeoutMs?: number;
  /**
   * Taking jobs from Buildkite's Stacks API (on unless `false`). `clusterId` tells this cluster's stacks apart from
   * other clusters'; by default it is the uid of the kube-system namespace.
   */
  buildkite?: false | (Partial<JobSourceSettings>);
  /** When a job pod that has not started counts as stuck. */
  timeouts?: Partial<StartTimeouts>;
}

/**
 * The running operator: informers feeding two controllers through their work queues. Started by `main.ts`, and
 * in-process by the integration tests.
 */
export class Operator {
  private constructor(
    private readonly informers: InformerSet,
    private readonly queues: WorkQueue[],
    private readonly recorder: EventRecorder,
    private readonly sources: JobSources | undefined,
    private readonly logger: Logger,
  ) {}

  static async start(options: OperatorOptions): Promise<Operator> {
    const { kubeConfig: kc, logger } = options;
    const clock = options.clock ?? realClock;
    const clients = { core: kc.makeApiClient(CoreV1Api), custom: kc.makeApiClient(CustomObjectsApi), objects: KubernetesObjectApi.makeApiClient(kc) };
    const recorder = new EventRecorder({ core: clients.core, component: "buildkite-operator", clock, logger });
    const informers = createInformers(kc, clock, logger);
    const base: ControllerContext = { clients, caches: informers.caches, clock, logger, recorder, stacks: NO_STACKS };
    // The queue work queue exists before the job sources, which enqueue a queue when its Buildkite conditions change.
    let enqueueQueue: (key: string) => void = () => undefined;
    const sources = options.buildkite === false ? undefined : new JobSources(base, {
      ...DEFAULT_JOB_SOURCE_SETTINGS,
      clusterId: options.buildkite?.clusterId ?? await clusterUid(clients.core),
      ...options.buildkite,
    }, (key) => { enqueueQueue(key); });
    const ctx: ControllerContext = { ...base, stacks: sources ?? NO_STACKS };
    const queueWork = workQueueFor(new QueueController(ctx), clock, logger);
    enqueueQueue = (key) => { queueWork.queue.add(key); };
    const jobWork = workQueueFor(new JobController(ctx, { ...DEFAULT_START_TIMEOUTS, ...options.timeouts }), clock, logger);
    wire(informers, queueWork.queue, jobWork.queue);
    if (sources) informers.listeners.queues.add(() => { sources.sync(); });
    await Promise.all(informers.all.map((i) => i.start()));
    await Promise.all(informers.all.map((i) => i.waitForSync(options.syncTimeoutMs ?? 60_000)));
    const workers = options.workers ?? 4;
    queueWork.start(workers);
    jobWork.start(workers);
    sources?.sync();
    logger.info("Started controllers", { workers, buildkite: sources !== undefined });
    return new Operator(informers, [queueWork.queue, jobWork.queue], recorder, sources, logger);
  }

  /** Ready when every informer has synced and is not stale (feeds /readyz). */
  healthy(): boolean {
    return this.informers.all.every((i) => i.healthy());
  }

  /** Stops taking work, lets in-flight reconciles finish, stops the informers and flushes pending Events. */
  async stop(): Promise<void> {
    await this.sources?.stop();
    await Promise.all(this.queues.map((q) => q.shutdown()));
    await Promise.all(this.informers.all.map((i) => i.stop()));
    await this.recorder.flush();
    this.logger.info("Stopped controllers");
  }
}

function workQueueFor(controller: Controller, clock: Clock, logger: Logger): { queue: WorkQueue; start(workers: number): void } {
  const queue = new WorkQueue({
    name: controller.name,
    clock,
    onDone: ({ key, error, retries }) => {
      if (error !== undefined) {
        logger.warn("Reconcile failed; retrying with backoff", { controller: controller.name, key, retries, error: describeError(error) });
      }
    },
  });
  return { queue, start: (workers) => { queue.start(workers, (key) => controller.reconcile(key)); } };
}

/** Maps every change to the keys it concerns. Callbacks only enqueue; the reconcilers read the caches. */
function wire(informers: InformerSet, queueWork: WorkQueue, jobWork: WorkQueue): void {
  const { caches, listeners } = informers;
  const queueKey = (namespace: string | undefined, name: string | undefined): string => `${namespace ?? ""}/${name ?? ""}`;
  // Jobs of a queue that are not terminal: they wait on the queue's readiness or for a free slot.
  const wakeJobs = (namespace: string | undefined, queue: string | undefined): void => {
    for (const job of caches.jobs.list(namespace)) {
      if (job.spec.queueRef.name === queue && !isTerminal(job.status?.phase) && job.status?.podUID === undefined) jobWork.add(keyOf(job));
    }
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
    queueWork.add(queueKey(j.metadata.namespace, j.spec.queueRef.name));
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

/** The uid of the kube-system namespace: stable for a cluster's life and different in every cluster. */
async function clusterUid(core: CoreV1Api): Promise<string> {
  const ns = await core.readNamespace({ name: "kube-system" });
  return ns.metadata?.uid ?? "unknown-cluster";
}

function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error);
}
