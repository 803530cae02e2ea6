import type { V1NetworkPolicy, V1PersistentVolumeClaim, V1Pod, V1ServiceAccount } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import type { ConditionUpdate } from "../api/conditions.js";
import type { StackDirectory } from "../buildkite/stack-directory.js";
import type { Metrics } from "../observability/metrics.js";
import type { Clock } from "./clock.js";
import type { EventRecorder } from "./event-recorder.js";
import type { KubeClients } from "./resources.js";
import type { ReconcileResult } from "./work-queue.js";

/** A read-only view of an informer's cache. */
export interface ReadCache<T> {
  get(name: string, namespace?: string): T | undefined;
  list(namespace?: string): T[];
}

/** The caches the controllers read from: every decision starts from what these hold now. */
export interface Caches {
  queues: ReadCache<BuildkiteQueue>;
  jobs: ReadCache<BuildkiteJob>;
  pods: ReadCache<V1Pod>;
  serviceAccounts: ReadCache<V1ServiceAccount>;
  networkPolicies: ReadCache<V1NetworkPolicy>;
  claims: ReadCache<V1PersistentVolumeClaim>;
}

/** What every controller is handed: clients to write with, caches to read from, and the injected clock and logger. */
export interface ControllerContext {
  clients: KubeClients;
  caches: Caches;
  clock: Clock;
  logger: Logger;
  recorder: EventRecorder;
  metrics: Metrics;
  /** Each queue's Buildkite stack, for reporting on its jobs. */
  stacks: StackDirectory;
  /** Each queue's AWS credentials check (CredentialsReady), when the operator runs one. */
  credentials?: QueueCredentials;
  /**
   * Whether this replica may act right now (it leads, and renewed its lease within the renew deadline); always true
   * without leader election. Kubernetes writes are refused centrally while it is false; work outside Kubernetes that
   * must not be doubled (reserving Buildkite jobs) checks it right before it starts.
   */
  mayAct?: () => boolean;
}

/** What the controllers read of the credentials preflight. */
export interface QueueCredentials {
  conditions(queueKey: string): ConditionUpdate[];
  /** One line for the Buildkite timeline of the queue's jobs while its credentials are broken. */
  timelineMessage(queueKey: string): string | undefined;
}

/** A level-based controller: informer callbacks map objects to keys; `reconcile(key)` makes the world match. */
export interface Controller {
  readonly name: string;
  reconcile(key: string): Promise<ReconcileResult>;
}
