import type { KubernetesObject } from "@kubernetes/client-node";
import { createHash } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import { findCondition } from "../api/conditions.js";
import { BUILDKITE_QUEUE, type BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { ANNOTATIONS, LABELS } from "../api/keys.js";
import type { DnsPeer } from "../config/config.js";
import type { Controller, ControllerContext, ReadCache } from "../kube/controller.js";
import { apiMessage, isForbidden, isInvalid, isNotFound } from "../kube/field-manager.js";
import { apply, patchStatus, splitKey } from "../kube/resources.js";
import type { ReconcileResult } from "../kube/work-queue.js";
import { isTerminal } from "../job/phase.js";
import { surplusCacheClaims } from "./cache-claims.js";
import { desiredNetworkPolicy, desiredServiceAccount } from "./children.js";
import { planQueueStatus, type QueueObservation } from "./status.js";

/** Secrets are read live (the operator does not watch Secrets); a missing one is looked for again this often. */
const SECRET_RETRY_MS = 10_000;
/** A ready queue re-checks its Secret this often, so a deleted token shows up on the queue without a change. */
const RECHECK_MS = 300_000;
/** A surplus cache claim kept for a pod that still mounts it is looked at again this often. */
const CLAIM_RETRY_MS = 10_000;

/** Operator-wide settings of the queue controller. */
export interface QueueSettings {
  /** The resolvers job pods may query when their queue names none. */
  clusterDNS: DnsPeer;
}

/**
 * The BuildkiteQueue controller (Kubernetes side): keeps the queue's ServiceAccount and NetworkPolicy as its spec says,
 * deletes cache claims it no longer needs, checks the agent token Secret, and writes conditions, concurrency and
 * active count to status.
 */
export class QueueController implements Controller {
  readonly name = "buildkitequeue";
  /** The last Secret check per queue. */
  private readonly secrets = new Map<string, { ref: string; atMs: number; state: QueueObservation["secret"] }>();

  constructor(private readonly ctx: ControllerContext, private readonly settings: QueueSettings) {}

  async reconcile(key: string): Promise<ReconcileResult> {
    const { namespace, name } = splitKey(key);
    const queue = this.ctx.caches.queues.get(name, namespace);
    // Gone: the garbage collector removes its children through their ownerReferences.
    if (!queue) {
      this.secrets.delete(key);
      this.ctx.metrics.queueDeleted(key);
      return;
    }
    const childError = await this.applyChildren(queue);
    const claimsKept = await this.deleteSurplusClaims(queue);
    const secret = await this.secretState(queue);
    const unfinished = this.ctx.caches.jobs.list(namespace).filter((j) => j.spec.queueRef.name === name && !isTerminal(j.status?.phase));
    const activeJobs = unfinished.filter((j) => j.status?.slot !== undefined).length;
    const observation: QueueObservation = {
      queue, activeJobs, waitingJobs: unfinished.length - activeJobs, secret, buildkite: [...this.ctx.stacks.conditions(key), ...this.ctx.credentials?.conditions(key) ?? []], ...(childError ? { childError } : {}),
    };
    const status = planQueueStatus(observation, this.ctx.clock.now());
    this.ctx.metrics.slots(key, activeJobs, status.concurrency ?? 0);
    if (!isDeepStrictEqual(status, queue.status ?? {})) {
      await patchStatus(this.ctx.clients, BUILDKITE_QUEUE, namespace, name, status);
      this.recordReadyChange(queue, status.conditions);
    }
    // Pods going away do not wake a queue; a surplus claim one of them kept is looked at again soon.
    return { requeueAfterMs: claimsKept ? CLAIM_RETRY_MS : secret === "present" ? RECHECK_MS : SECRET_RETRY_MS };
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

  private async applyIfChanged(desired: KubernetesObject, cache: ReadCache<KubernetesObject>): Promise<QueueObservation["childError"]> {
    const meta = desired.metadata ?? {};
    const hash = createHash("sha256").update(JSON.stringify(desired)).digest("hex").slice(0, 16);
    meta.annotations = { ...meta.annotations, [ANNOTATIONS.specHash]: hash };
    const cached = cache.get(meta.name ?? "", meta.namespace);
    if (cached?.metadata?.annotations?.[ANNOTATIONS.specHash] === hash) return undefined;
    try {
      await apply(this.ctx.clients, desired);
      this.ctx.logger.info(`Applied ${desired.kind ?? "object"}`, { namespace: meta.namespace, name: meta.name, queue: meta.labels?.[LABELS.queue] });
      return undefined;
    } catch (err) {
      // Refused as invalid or forbidden (an immutable PVC field, a quota): retrying cannot help until the spec changes.
      if (isInvalid(err) || isForbidden(err)) return { kind: desired.kind ?? "object", name: meta.name ?? "", message: apiMessage(err) };
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
    const jobs = caches.jobs.list(namespace).filter((j) => j.spec.queueRef.name === queue.metadata.name)
      .map((job) => ({ job, hasPod: caches.pods.get(job.metadata.name ?? "", namespace) !== undefined }));
    const surplus = surplusCacheClaims({ queue, claims: caches.claims.list(namespace), jobs, pods: caches.pods.list(namespace) });
    for (const name of surplus.remove) {
      await this.ctx.clients.core.deleteNamespacedPersistentVolumeClaim({ name, namespace }).catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
      this.ctx.logger.info("Deleted surplus cache claim", { namespace, queue: queue.metadata.name, name });
    }
    return surplus.kept.length > 0;
  }

  /** The Secret's state, read at most every {@link SECRET_RETRY_MS} per queue: queues reconcile on every job change. */
  private async secretState(queue: BuildkiteQueue): Promise<QueueObservation["secret"]> {
    const ref = queue.spec.agentTokenSecretRef;
    const key = `${queue.metadata.namespace ?? ""}/${queue.metadata.name ?? ""}`;
    const seen = this.secrets.get(key);
    const now = this.ctx.clock.nowMs();
    if (seen && seen.ref === JSON.stringify(ref) && now - seen.atMs < SECRET_RETRY_MS) return seen.state;
    const state = await this.readSecretState(queue);
    this.secrets.set(key, { ref: JSON.stringify(ref), atMs: now, state });
    return state;
  }

  private async readSecretState(queue: BuildkiteQueue): Promise<QueueObservation["secret"]> {
    const ref = queue.spec.agentTokenSecretRef;
    try {
      const secret = await this.ctx.clients.core.readNamespacedSecret({ name: ref.name, namespace: queue.metadata.namespace ?? "" });
      // Only the key's presence is looked at; the token itself is never read into a log or a status.
      return secret.data?.[ref.key] !== undefined || secret.stringData?.[ref.key] !== undefined ? "present" : "missingKey";
    } catch (err) {
      if (isNotFound(err)) return "missing";
      throw err;
    }
  }

  private recordReadyChange(queue: BuildkiteQueue, conditions: Parameters<typeof findCondition>[0]): void {
    const before = findCondition(queue.status?.conditions, "Ready");
    const after = findCondition(conditions, "Ready");
    if (!after || (before?.status === after.status && before.reason === after.reason)) return;
    this.ctx.recorder.record(queue, after.status === "True" ? "Normal" : "Warning", after.reason, after.message);
    this.ctx.logger.info(after.status === "True" ? "Queue became ready" : "Queue became not ready",
      { namespace: queue.metadata.namespace, queue: queue.metadata.name, reason: after.reason });
  }
}
