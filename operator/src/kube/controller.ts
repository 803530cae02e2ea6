import type { V1NetworkPolicy, V1PersistentVolumeClaim, V1Pod, V1ServiceAccount } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import type { Metrics } from "../observability/metrics.js";
import type { Clock } from "./clock.js";
import type { EventRecorder } from "./event-recorder.js";
import type { Expectations } from "./expectations.js";
import type { KubeClients } from "./resources.js";
import type { ReconcileResult } from "./work-queue.js";

/** A read-only view of an informer's cache. */
export interface ReadCache<T> {
  get(name: string, namespace?: string): T | undefined;
  list(namespace?: string): T[];
}

/** Each queue's jobs that count for its capacity, and those waiting for their pod, from the caches (see LiveJobs). */
export interface LiveJobsView {
  /** Jobs of the queue that are not terminal, or terminal with their pod still in the cache. */
  of(namespace: string, queue: string): BuildkiteJob[];
  /** Jobs of the queue that are not terminal and have no pod recorded. */
  waiting(namespace: string, queue: string): BuildkiteJob[];
}

/** The caches the controllers read from: every decision starts from what these hold now. */
export interface Caches {
  /** An index over `jobs` and `pods`, kept with them. */
  live: LiveJobsView;
  queues: ReadCache<BuildkiteQueue>;
  jobs: ReadCache<BuildkiteJob>;
  pods: ReadCache<V1Pod>;
  serviceAccounts: ReadCache<V1ServiceAccount>;
  networkPolicies: ReadCache<V1NetworkPolicy>;
  claims: ReadCache<V1PersistentVolumeClaim>;
}

/**
 * What every controller is handed: Kubernetes clients to write with, caches to read from, and the injected clock,
 * logger, Event recorder and metrics. Kubernetes things only: a controller's other dependencies (Buildkite, AWS) are
 * its own constructor's arguments.
 */
export interface ControllerContext {
  clients: KubeClients;
  caches: Caches;
  clock: Clock;
  logger: Logger;
  recorder: EventRecorder;
  metrics: Metrics;
  /**
   * Why the caches cannot be trusted right now (an informer not synced, failed or stale), or undefined when they can.
   * Decisions that act on the absence of something (nothing holds this job, this slot is free) wait while it says so.
   */
  cacheProblem?: () => string | undefined;
  /** What this process created or assigned that the caches may not show yet; shared by the job controller and sources. */
  expectations: Expectations;
  /**
   * Whether this replica may act right now (it leads, and renewed its lease within the renew deadline); always true
   * without leader election. Kubernetes writes are refused centrally while it is false; work outside Kubernetes that
   * must not be doubled (reserving Buildkite jobs) checks it right before it starts.
   */
  mayAct?: () => boolean;
}

/** A level-based controller: informer callbacks map objects to keys; `reconcile(key)` makes the world match. */
export interface Controller {
  readonly name: string;
  reconcile(key: string): Promise<ReconcileResult>;
}
