import type { KubernetesObject } from "@kubernetes/client-node";
import { isDeepStrictEqual } from "node:util";
import { findCondition, setCondition } from "../api/conditions.js";
import { BUILDKITE_JOB } from "../api/generated/buildkite-job.js";
import { networkPolicyName } from "../api/names.js";
import { BUILDKITE_QUEUE, type BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { ANNOTATIONS, FINALIZER, LABELS } from "../api/keys.js";
import type { ConditionUpdate } from "../api/conditions.js";
import type { DnsPeer } from "../config/config.js";
import type { Controller, ControllerContext, ReadCache } from "../kube/controller.js";
import { apiMessage, isForbidden, isInvalid, isNotFound } from "../kube/field-manager.js";
import { annotate, apply, patchStatus, setFinalizer, splitKey } from "../kube/resources.js";
import type { ReconcileResult } from "../kube/work-queue.js";
import { jobCounts, queueCapacity } from "../capacity/queue-capacity.js";
import { surplusCacheClaims } from "./cache-claims.js";
import { planDeletion } from "./deletion.js";
import { desiredNetworkPolicy, desiredServiceAccount } from "./children.js";
import { endpointRefusal, type AgentTokenReader } from "./agent-token.js";
import { COUNTS_WRITE_INTERVAL_MS, onlyCountsChanged, planQueueStatus, type QueueObservation } from "./status.js";

/** A missing or broken token Secret is looked for again this often (the operator does not watch Secrets). */
const SECRET_RETRY_MS = 10_000;
/** How long a deleted queue waits for Buildkite to deregister its stack before letting go without it. */
const DEREGISTER_DEADLINE_MS = 300_000;
/** A ready queue re-checks its Secret this often, so a deleted token shows up on the queue without a change. */
const RECHECK_MS = 300_000;
/** A surplus cache claim kept for a pod that still mounts it is looked at again this often. */
const CLAIM_RETRY_MS = 10_000;

/** Operator-wide settings of the queue controller. */
export interface QueueSettings {
  /** The resolvers job pods may query when their queue names none. */
  clusterDNS: DnsPeer;
  /** The only agent API endpoints a queue's token may be sent to. */
  allowedEndpoints: readonly string[];
}

/** The Buildkite side of a queue, as the queue controller sees it (the job sources). */
export interface QueueBuildkiteSide {
  conditions(queueKey: string): ConditionUpdate[];
  /** Whether the queue's stack is registered now, so jobs can still be reported to Buildkite. */
  connected(queueKey: string): boolean;
  /**
   * Stops the queue's job source for good and deregisters its stack (the queue is being deleted); resolves to why
   * the stack could not be deregistered, or undefined when it was (or there was none). Throws when Buildkite may
   * answer later.
   */
  release(queue: BuildkiteQueue): Promise<string | undefined>;
}

/**
 * What the queue controller reads of the queue's other owners, so that it alone writes the queue's status: the
 * Buildkite side (the job source: Registered, Dispatching, JobTokens) and the AWS credentials check (CredentialsReady).
 */
export interface QueueSides {
  /** The token Secret's one reader, shared with the job source. */
  tokens: AgentTokenReader;
  buildkite: QueueBuildkiteSide;
  credentials: { conditions(queueKey: string): ConditionUpdate[] };
}

/** For an operator (or a test) that neither talks to Buildkite nor checks credentials. */
export const NO_SIDES = {
  buildkite: { conditions: () => [], connected: () => false, release: () => Promise.resolve(undefined) },
  credentials: { conditions: () => [] },
} satisfies Omit<QueueSides, "tokens">;

/**
 * The BuildkiteQueue controller (Kubernetes side): keeps the queue's ServiceAccount and NetworkPolicy as its spec says,
 * deletes cache claims it no longer needs, checks the agent token Secret, and writes conditions, concurrency and
 * active count to status.
 */
export class QueueController implements Controller {
  readonly name = "buildkitequeue";
  /** When each queue's status was last written: a change of its job counts alone waits out the interval. */
  private readonly countsWrittenMs = new Map<string, number>();
  constructor(
    private readonly ctx: ControllerContext,
    private readonly settings: QueueSettings,
    private readonly sides: QueueSides,
  ) {}

  async reconcile(key: string): Promise<ReconcileResult> {
    const { namespace, name } = splitKey(key);
    const queue = this.ctx.caches.queues.get(name, namespace);
    // Gone: the garbage collector removes its children through their ownerReferences.
    if (!queue) {
      this.countsWrittenMs.delete(key);
      this.ctx.metrics.queueDeleted(key);
      return;
    }
    if (queue.metadata.deletionTimestamp) return this.finalize(queue);
    // Before any child exists: the finalizer is what keeps the NetworkPolicy until the queue's pods are gone.
    await setFinalizer(this.ctx.clients, queue, FINALIZER, true);
    const childError = await this.applyChildren(queue);
    const claimsKept = await this.deleteSurplusClaims(queue);
    const secret = await this.sides.tokens.state(queue);
    const counts = jobCounts(queueCapacity(queue, this.ctx.caches, this.ctx.expectations));
    const activeJobs = counts.active;
    const observation: QueueObservation = {
      queue,
      activeJobs,
      waitingJobs: counts.waiting,
      secret,
      endpointRefused: endpointRefusal(queue, this.settings.allowedEndpoints),
      buildkite: [...this.sides.buildkite.conditions(key), ...this.sides.credentials.conditions(key)],
      ...(childError ? { childError } : {}),
    };
    const status = planQueueStatus(observation, this.ctx.clock.now());
    this.ctx.metrics.slots(key, activeJobs, status.concurrency ?? 0);
    if (!isDeepStrictEqual(status, queue.status ?? {})) {
      const sinceMs = this.ctx.clock.nowMs() - (this.countsWrittenMs.get(key) ?? -Infinity);
      if (onlyCountsChanged(queue.status ?? {}, status) && sinceMs < COUNTS_WRITE_INTERVAL_MS)
        return { requeueAfterMs: COUNTS_WRITE_INTERVAL_MS - sinceMs };
      await patchStatus(this.ctx.clients, BUILDKITE_QUEUE, namespace, name, status);
      this.countsWrittenMs.set(key, this.ctx.clock.nowMs());
      this.recordReadyChange(queue, status.conditions);
    }
    // Pods going away do not wake a queue; a surplus claim one of them kept is looked at again soon.
    return { requeueAfterMs: claimsKept ? CLAIM_RETRY_MS : secret === "present" ? RECHECK_MS : SECRET_RETRY_MS };
  }

  /**
   * A queue being deleted: takes no new job (its job source stops dispatching), stops every job's pod (their jobs are
   * canceled in Buildkite: by the agent when running, with `finish` and a detail when not started), waits for the pods
   * to be gone, deregisters the stack, and only then lets the NetworkPolicy and ServiceAccount go with the queue.
   */
  private async finalize(queue: BuildkiteQueue): Promise<ReconcileResult> {
    if (!queue.metadata.finalizers?.includes(FINALIZER)) return undefined;
    const namespace = queue.metadata.namespace ?? "";
    const name = queue.metadata.name ?? "";
    const key = `${namespace}/${name}`;
    const jobs = this.ctx.caches.jobs.list(namespace).filter((j) => j.spec.queueRef.name === name);
    const pods = this.ctx.caches.pods.list(namespace).filter((p) => p.metadata?.labels?.[LABELS.queue] === name).length;
    const plan = planDeletion({ jobs, pods, reporting: this.sides.buildkite.connected(key) });
    for (const job of plan.stop) {
      this.ctx.expectations.jobChanged(`${namespace}/${job}`);
      await annotate(this.ctx.clients, BUILDKITE_JOB, namespace, job, {
        [ANNOTATIONS.stop]: `BuildkiteQueue ${key} was deleted.`,
      }).catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
    }
    if (plan.wait !== undefined) {
      await this.writeDeleting(queue, plan.wait);
      return { requeueAfterMs: 2_000 };
    }
    let problem: string | undefined;
    try {
      problem = await this.sides.buildkite.release(queue);
    } catch (err) {
      // Buildkite unreachable: retried with backoff, but a deletion does not wait on it for ever.
      const since = new Date(queue.metadata.deletionTimestamp ?? this.ctx.clock.now()).getTime();
      if (this.ctx.clock.nowMs() - since < DEREGISTER_DEADLINE_MS) throw err;
      problem = `Buildkite did not answer for ${String(DEREGISTER_DEADLINE_MS / 60_000)} minutes: ${apiMessage(err)}`;
    }
    if (problem !== undefined) {
      this.ctx.recorder.record(
        queue,
        "Warning",
        "StackNotDeregistered",
        `${problem} The queue's stack may remain in Buildkite; remove it there.`,
      );
    }
    const policy = this.ctx.caches.networkPolicies.get(networkPolicyName(queue), namespace);
    // Typed lists leave kind and apiVersion off their items, so the cached policy is named here.
    if (policy)
      await setFinalizer(
        this.ctx.clients,
        { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: policy.metadata ?? {} },
        FINALIZER,
        false,
      ).catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
    await setFinalizer(this.ctx.clients, queue, FINALIZER, false);
    this.ctx.logger.info("Released deleted queue: its job pods are gone and its stack deregistered", {
      namespace,
      queue: name,
    });
    return undefined;
  }

  private async writeDeleting(queue: BuildkiteQueue, message: string): Promise<void> {
    const ready = findCondition(queue.status?.conditions, "Ready");
    if (ready?.reason === "Deleting" && ready.message === message) return;
    const status = {
      ...queue.status,
      conditions: setCondition(
        queue.status?.conditions,
        { type: "Ready", status: "False", reason: "Deleting", message },
        queue.metadata.generation,
        this.ctx.clock.now(),
      ),
    };
    await patchStatus(
      this.ctx.clients,
      BUILDKITE_QUEUE,
      queue.metadata.namespace ?? "",
      queue.metadata.name ?? "",
      status,
    );
  }

  /** Applies each child whose cached copy differs from the desired one; returns the first the API server refused. */
  private async applyChildren(queue: BuildkiteQueue): Promise<QueueObservation["childError"]> {
    const { caches } = this.ctx;
    // Cache claims are not among them: the job controller makes each one when a job of its scope first needs it.
    const children: [KubernetesObject, ReadCache<KubernetesObject>][] = [
      [desiredServiceAccount(queue), caches.serviceAccounts],
      [desiredNetworkPolicy(queue, this.settings.clusterDNS), caches.networkPolicies],
    ];
    let refused: QueueObservation["childError"];
    for (const [desired, cache] of children) {
      const error = await this.applyIfChanged(desired, cache);
      refused ??= error;
    }
    return refused;
  }

  /**
   * Applies a child unless the cached copy already holds everything desired: compared field by field, not by a hash
   * the operator wrote, so a child edited by hand (a NetworkPolicy opened up) is put back as it should be.
   */
  private async applyIfChanged(
    desired: KubernetesObject,
    cache: ReadCache<KubernetesObject>,
  ): Promise<QueueObservation["childError"]> {
    const meta = desired.metadata ?? {};
    const cached = cache.get(meta.name ?? "", meta.namespace);
    if (cached && covers(cached, desired)) return undefined;
    try {
      await apply(this.ctx.clients, desired);
      this.ctx.logger.info(`Applied ${desired.kind ?? "object"}`, {
        namespace: meta.namespace,
        name: meta.name,
        queue: meta.labels?.[LABELS.queue],
      });
      return undefined;
    } catch (err) {
      // Refused as invalid or forbidden (an immutable PVC field, a quota): retrying cannot help until the spec changes.
      if (isInvalid(err) || isForbidden(err))
        return { kind: desired.kind ?? "object", name: meta.name ?? "", message: apiMessage(err) };
      throw err;
    }
  }

  /**
   * Deletes the claims of slots the queue can no longer hand out and of removed caches ({@link surplusCacheClaims});
   * returns whether some wait for the pod or job that uses them.
   */
  private async deleteSurplusClaims(queue: BuildkiteQueue): Promise<boolean> {
    const namespace = queue.metadata.namespace ?? "";
    const { caches } = this.ctx;
    const capacity = queueCapacity(queue, caches, this.ctx.expectations);
    const surplus = surplusCacheClaims({
      queue,
      claims: caches.claims.list(namespace),
      capacity,
      pods: caches.pods.list(namespace),
    });
    for (const name of surplus.remove) {
      await this.ctx.clients.core.deleteNamespacedPersistentVolumeClaim({ name, namespace }).catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
      this.ctx.logger.info("Deleted surplus cache claim", { namespace, queue: queue.metadata.name, name });
    }
    return surplus.kept.length > 0;
  }

  private recordReadyChange(queue: BuildkiteQueue, conditions: Parameters<typeof findCondition>[0]): void {
    const before = findCondition(queue.status?.conditions, "Ready");
    const after = findCondition(conditions, "Ready");
    if (!after || (before?.status === after.status && before.reason === after.reason)) return;
    this.ctx.recorder.record(queue, after.status === "True" ? "Normal" : "Warning", after.reason, after.message);
    this.ctx.logger.info(after.status === "True" ? "Queue became ready" : "Queue became not ready", {
      namespace: queue.metadata.namespace,
      queue: queue.metadata.name,
      reason: after.reason,
    });
  }
}

/**
 * Whether `actual` (as the API server serves it) holds every field of `desired`: objects may carry more keys (defaults,
 * other managers' labels), lists must match item for item (an extra egress rule is drift), and an empty list or
 * object counts as absent (the API server drops them).
 */
export function covers(actual: unknown, desired: unknown): boolean {
  if (Array.isArray(desired)) {
    const items = Array.isArray(actual) ? actual : [];
    return items.length === desired.length && desired.every((d, i) => covers(items[i], d));
  }
  if (desired !== null && typeof desired === "object") {
    const fields = Object.entries(desired as Record<string, unknown>);
    if (actual === undefined || actual === null) return fields.every(([, v]) => isEmpty(v));
    if (typeof actual !== "object") return false;
    return fields.every(([k, v]) => covers((actual as Record<string, unknown>)[k], v));
  }
  return actual === desired || desired === undefined;
}

const isEmpty = (v: unknown): boolean =>
  v === undefined ||
  (Array.isArray(v) && v.length === 0) ||
  (v !== null && typeof v === "object" && Object.values(v as Record<string, unknown>).every(isEmpty));
