import type { V1Pod } from "@kubernetes/client-node";
import { isDeepStrictEqual } from "node:util";
import { BUILDKITE_JOB, type BuildkiteJob, type BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { faultPoint } from "../fault-points.js";
import type { Controller, ControllerContext } from "../kube/controller.js";
import { apiMessage, createRefusal, isConflict, isNotFound } from "../kube/field-manager.js";
import { deleteCustomObject, keyOf, patchStatus, splitKey } from "../kube/resources.js";
import type { ReconcileResult } from "../kube/work-queue.js";
import { decideSlot, queueCapacity, seatOf, type SlotDecision } from "../capacity/queue-capacity.js";
import { ensureCacheClaims } from "./ensure-claims.js";
import { isTerminal } from "./phase.js";
import { planJob, type JobPlan } from "./plan.js";
import { decideStep } from "./step-request.js";
import { LAST_WORDS, lastWordsSource, withLastWords } from "./last-words.js";
import { buildPod } from "./pod-builder.js";
import {
  afterPodCreate,
  mustConfirmPodGone,
  needsLiveRead,
  progressDelayMs,
  slotToHold,
  type PodCreation,
} from "./steps.js";
import { DEFAULT_START_TIMEOUTS, type StartTimeouts } from "./stuck.js";

/**
 * The BuildkiteJob controller: turns each BuildkiteJob into exactly one pod, follows the pod to a terminal phase,
 * records the outcome, deletes the pod, and deletes the BuildkiteJob its TTL later. It never talks to Buildkite: the
 * job source reads the job and its status and does that, writing back only annotations. Decisions are {@link planJob}'s;
 * this shell gathers the observation and performs the plan.
 */
export class JobController implements Controller {
  readonly name = "buildkitejob";
  /** When this process last wrote each job's status: a pod's progress is written at most once a second. */
  private readonly statusWrittenMs = new Map<string, number>();
  /** The pod this process last asked to delete for each job: its deletion may not be in the cache yet. */
  private readonly podDeleted = new Map<string, string>();

  constructor(
    private readonly ctx: ControllerContext,
    private readonly timeouts: StartTimeouts = DEFAULT_START_TIMEOUTS,
  ) {}

  async reconcile(key: string): Promise<ReconcileResult> {
    const { namespace, name } = splitKey(key);
    let job = this.ctx.caches.jobs.get(name, namespace);
    if (!job) {
      // Gone: its pod goes with it through the ownerReference and the garbage collector, and so does its slot.
      this.ctx.expectations.forget(key);
      this.ctx.expectations.jobChanged(key);
      this.statusWrittenMs.delete(key);
      this.podDeleted.delete(key);
      return;
    }
    let plan = await this.plan(key, job);
    // A job this process created and made no pod for cannot be newer than the cache in any way that matters here.
    if (needsLiveRead(plan) && !this.ctx.expectations.unchangedSinceCreated(key, job.metadata.uid)) {
      const live = await this.readJob(namespace, name);
      if (!live) return;
      if (live.metadata.resourceVersion !== job.metadata.resourceVersion) {
        job = live;
        plan = await this.plan(key, job);
      }
    }
    return this.perform(key, job, this.ctx.caches.queues.get(job.spec.queueRef.name, namespace), plan);
  }

  /**
   * Plans the job, deciding its slot from the queue's capacity and setting aside the slot of a pod it is to create, in
   * one synchronous step: another worker deciding for another job of the queue in between would see the slot free.
   */
  private async plan(key: string, job: BuildkiteJob): Promise<JobPlan> {
    const namespace = job.metadata.namespace ?? "";
    const queue = this.ctx.caches.queues.get(job.spec.queueRef.name, namespace);
    const pod = await this.currentPod(job);
    // A job that records its slot, or has ended, needs no look at the rest of the queue.
    const recorded = job.status?.slot;
    const slot: SlotDecision =
      recorded !== undefined || isTerminal(job.status?.phase)
        ? { slot: recorded ?? 0 }
        : queue
          ? decideSlot(queueCapacity(queue, this.ctx.caches, this.ctx.expectations), job)
          : { waiting: { position: 0, free: 0 } };
    const plan = planJob({ job, queue, pod, slot, timeouts: this.timeouts }, this.ctx.clock.now());
    const hold = slotToHold(plan, seatOf(job, pod).slot);
    if (queue && hold !== undefined) this.ctx.expectations.assigned(keyOf(queue), key, hold);
    else this.ctx.expectations.forget(key);
    return plan;
  }

  private async readJob(namespace: string, name: string): Promise<BuildkiteJob | undefined> {
    try {
      const { group, version, plural } = BUILDKITE_JOB;
      return (await this.ctx.clients.custom.getNamespacedCustomObject({
        group,
        version,
        plural,
        namespace,
        name,
      })) as BuildkiteJob;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** The job's pod from the cache; when the cache has none but the job recorded one, a live read confirms it is gone. */
  private async currentPod(job: BuildkiteJob): Promise<V1Pod | undefined> {
    const name = job.metadata.name ?? "";
    const namespace = job.metadata.namespace ?? "";
    const cached = this.ctx.caches.pods.get(name, namespace);
    if (!mustConfirmPodGone(job, cached)) return cached;
    try {
      return await this.ctx.clients.core.readNamespacedPod({ name, namespace });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  private async perform(
    key: string,
    job: BuildkiteJob,
    queue: BuildkiteQueue | undefined,
    plan: JobPlan,
  ): Promise<ReconcileResult> {
    let status = plan.status;
    let stored = job.status ?? {};
    // A pod's progress waits for the next write (often its outcome): the job is looked at again when it may be written.
    const holdMs = progressDelayMs(plan, stored, this.statusWrittenMs.get(key), this.ctx.clock.now().getTime());
    if (holdMs > 0) return { requeueAfterMs: Math.min(holdMs, plan.requeueAfterMs ?? holdMs) };
    const events = [...plan.events];
    // The cache shows the pod going or gone: nothing more to remember.
    if (!plan.actions.includes("deletePod")) this.podDeleted.delete(key);
    for (const action of plan.actions) {
      switch (action) {
        case "createPod": {
          if (!queue || status.slot === undefined) break;
          const after = afterPodCreate(status, await this.createPod(queue, job, status.slot), this.ctx.clock.now());
          if ("waitMs" in after) {
            // The slot goes back meanwhile: the job is looked at again once its claim is gone and can be made anew.
            this.ctx.expectations.forget(key);
            this.ctx.logger.info("Waiting before creating pod", {
              namespace: job.metadata.namespace,
              job: job.metadata.name,
              why: after.why,
            });
            return { requeueAfterMs: after.waitMs };
          }
          status = after.status;
          events.push(...after.events);
          break;
        }
        case "deletePod":
          if (!isTerminal(stored.phase)) {
            // The failed container's own words, read while the pod still has them.
            const words = await this.lastWords(job);
            if (words) {
              status = withLastWords(status, words.container, words.log);
              events.push({ type: "Warning", reason: "ContainerLog", message: status.message ?? "" });
            }
          }
          // Record the outcome before the pod that proves it goes away.
          await this.writeStatus(job, stored, status);
          stored = status;
          // Once per pod: the job's own status write often comes back before the pod's deletion does.
          if (this.podDeleted.get(key) !== (job.status?.podUID ?? "")) await this.deletePod(job);
          this.podDeleted.set(key, job.status?.podUID ?? "");
          break;
        case "deleteJob":
          await deleteCustomObject(
            this.ctx.clients,
            BUILDKITE_JOB,
            job.metadata.namespace ?? "",
            job.metadata.name ?? "",
          ).catch(ignoreNotFound);
          this.ctx.logger.info("Deleted finished job after its TTL", {
            namespace: job.metadata.namespace,
            job: job.metadata.name,
          });
          return;
      }
    }
    await this.writeStatus(job, stored, status);
    for (const e of events) this.ctx.recorder.record(job, e.type, e.reason, e.message);
    this.ctx.metrics.jobStatusChanged(job, job.status ?? {}, status);
    return plan.requeueAfterMs !== undefined ? { requeueAfterMs: plan.requeueAfterMs } : undefined;
  }

  private async createPod(queue: BuildkiteQueue, job: BuildkiteJob, slot: number): Promise<PodCreation> {
    // The cache claims of the job's scope and slot first: a pod whose claim is missing would never be scheduled.
    const claims = await ensureCacheClaims(this.ctx, queue, job, slot);
    if (!("ready" in claims)) return claims;
    const step = decideStep(queue, job);
    // planJob refuses such a job before it asks for a pod; a queue changed since is refused here the same way.
    if ("refused" in step) return { rejected: step.refused };
    const body = buildPod(queue, job, slot, step.plan);
    const namespace = job.metadata.namespace ?? "";
    // Whatever the answer, a pod may exist from now on: the job's cached copy may lag behind it.
    this.ctx.expectations.jobChanged(keyOf(job));
    try {
      const pod = await this.ctx.clients.core.createNamespacedPod({ namespace, body });
      this.ctx.logger.info("Created pod", { namespace, job: job.metadata.name, pod: pod.metadata?.name, slot });
      faultPoint("after-pod-create");
      return { pod };
    } catch (err) {
      // A pod of this name exists (the cache lags behind an earlier create): read it back instead of creating twice.
      if (isConflict(err))
        return { pod: await this.ctx.clients.core.readNamespacedPod({ name: body.metadata?.name ?? "", namespace }) };
      // Admission (PodSecurity, quotas, webhooks) or validation refused it: retrying the same pod cannot help. The
      // operator's own RBAC lacking the verb ("denied") is a deployment mistake that fixing its role cures: retried.
      if (createRefusal(err) === "refused")
        return { rejected: `The API server refused the job's pod: ${apiMessage(err)}` };
      throw err;
    }
  }

  /** The last log lines of the container that made the job's pod fail, if a runtime ran it; undefined otherwise. */
  private async lastWords(job: BuildkiteJob): Promise<{ container: string; log: string } | undefined> {
    const name = job.metadata.name ?? "";
    const namespace = job.metadata.namespace ?? "";
    const pod = this.ctx.caches.pods.get(name, namespace);
    const source = pod ? lastWordsSource(pod) : undefined;
    if (source === undefined) return undefined;
    const { container, previous } = source;
    try {
      const log = await this.ctx.clients.core.readNamespacedPodLog({
        name,
        namespace,
        container,
        previous,
        tailLines: LAST_WORDS.lines,
        limitBytes: LAST_WORDS.bytes * 2,
      });
      return { container, log };
    } catch (err) {
      this.ctx.logger.info("Could not read the failed container's log", {
        namespace,
        job: name,
        container,
        error: (err as Error).message,
      });
      return undefined;
    }
  }

  private async deletePod(job: BuildkiteJob): Promise<void> {
    const name = job.metadata.name ?? "";
    const namespace = job.metadata.namespace ?? "";
    const uid = job.status?.podUID;
    // The UID precondition makes sure only this job's pod is deleted, never a newer one of the same name.
    await this.ctx.clients.core
      .deleteNamespacedPod({ name, namespace, ...(uid ? { body: { preconditions: { uid } } } : {}) })
      .then(
        () => {
          this.ctx.logger.info("Deleted finished pod", { namespace, job: name, pod: name });
        },
        (err: unknown) => {
          if (!isNotFound(err) && !isConflict(err)) throw err;
        },
      );
  }

  /** Writes the status only when it differs from what is stored (a no-op reconcile makes no API call). */
  private async writeStatus(job: BuildkiteJob, stored: BuildkiteJobStatus, status: BuildkiteJobStatus): Promise<void> {
    if (isDeepStrictEqual(status, stored)) return;
    await patchStatus(this.ctx.clients, BUILDKITE_JOB, job.metadata.namespace ?? "", job.metadata.name ?? "", status);
    this.statusWrittenMs.set(keyOf(job), this.ctx.clock.now().getTime());
  }
}

function ignoreNotFound(err: unknown): void {
  if (!isNotFound(err)) throw err;
}
