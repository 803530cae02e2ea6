import type { V1Pod } from "@kubernetes/client-node";
import { isDeepStrictEqual } from "node:util";
import { BUILDKITE_JOB, type BuildkiteJob, type BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { setCondition, type ConditionUpdate } from "../api/conditions.js";
import { ANNOTATIONS } from "../api/keys.js";
import { faultPoint } from "../fault-points.js";
import { BuildkiteApiError } from "../buildkite/errors.js";
import type { Controller, ControllerContext } from "../kube/controller.js";
import { apiMessage, createRefusal, isConflict, isNotFound } from "../kube/field-manager.js";
import { deleteCustomObject, keyOf, patchStatus, splitKey } from "../kube/resources.js";
import type { ReconcileResult } from "../kube/work-queue.js";
import { decideSlot, queueCapacity, seatOf } from "../capacity/queue-capacity.js";
import { ensureCacheClaims } from "./ensure-claims.js";
import { neverAcquired, planJob, REPORTED, type JobPlan } from "./plan.js";
import { buildPod } from "./pod-builder.js";
import { afterPodCreate, mustConfirmPodGone, needsLiveRead, slotToHold, type PodCreation } from "./steps.js";
import { DEFAULT_START_TIMEOUTS, type StartTimeouts } from "./stuck.js";

/**
 * The BuildkiteJob controller: turns each BuildkiteJob into exactly one pod, follows the pod to a terminal phase,
 * records the outcome, deletes the pod, and deletes the BuildkiteJob its TTL later. Decisions are {@link planJob}'s;
 * this shell gathers the observation and performs the plan.
 */
export class JobController implements Controller {
  readonly name = "buildkitejob";

  constructor(private readonly ctx: ControllerContext, private readonly timeouts: StartTimeouts = DEFAULT_START_TIMEOUTS) {}

  async reconcile(key: string): Promise<ReconcileResult> {
    const { namespace, name } = splitKey(key);
    let job = this.ctx.caches.jobs.get(name, namespace);
    if (!job) {
      // Gone: its pod goes with it through the ownerReference and the garbage collector, and so does its slot.
      this.ctx.expectations.forget(key);
      return;
    }
    let plan = await this.plan(key, job);
    if (needsLiveRead(plan)) {
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
    const capacity = queue ? queueCapacity(queue, this.ctx.caches, this.ctx.expectations) : undefined;
    const slot = capacity ? decideSlot(capacity, job) : { waiting: { position: 0, free: 0 } };
    const plan = planJob({ job, queue, pod, slot, timeouts: this.timeouts }, this.ctx.clock.now());
    const hold = slotToHold(plan, seatOf(job, pod).slot);
    if (queue && hold !== undefined) this.ctx.expectations.assigned(keyOf(queue), key, hold);
    else this.ctx.expectations.forget(key);
    return plan;
  }

  private async readJob(namespace: string, name: string): Promise<BuildkiteJob | undefined> {
    try {
      const { group, version, plural } = BUILDKITE_JOB;
      return await this.ctx.clients.custom.getNamespacedCustomObject({ group, version, plural, namespace, name }) as BuildkiteJob;
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

  private async perform(key: string, job: BuildkiteJob, queue: BuildkiteQueue | undefined, plan: JobPlan): Promise<ReconcileResult> {
    let status = plan.status;
    let stored = job.status ?? {};
    const events = [...plan.events];
    for (const action of plan.actions) {
      switch (action) {
        case "createPod": {
          if (!queue || status.slot === undefined) break;
          const after = afterPodCreate(status, await this.createPod(queue, job, status.slot), this.ctx.clock.now());
          if ("waitMs" in after) {
            // The slot goes back meanwhile: the job is looked at again once its claim is gone and can be made anew.
            this.ctx.expectations.forget(key);
            this.ctx.logger.info("Waiting before creating pod", { namespace: job.metadata.namespace, job: job.metadata.name, why: after.why });
            return { requeueAfterMs: after.waitMs };
          }
          status = after.status;
          events.push(...after.events);
          break;
        }
        case "deletePod":
          // Record the outcome before the pod that proves it goes away.
          await this.writeStatus(job, stored, status);
          stored = status;
          await this.deletePod(job);
          break;
        case "finishInBuildkite": {
          const reported = await this.reportToBuildkite(job, status);
          if (reported === "later") return { requeueAfterMs: 5_000 };
          status = { ...status, conditions: setCondition(status.conditions, reported, job.metadata.generation, this.ctx.clock.now()) };
          events.push({ type: reported.status === "True" ? "Normal" : "Warning", reason: reported.reason, message: reported.message });
          break;
        }
        case "deleteJob":
          await deleteCustomObject(this.ctx.clients, BUILDKITE_JOB, job.metadata.namespace ?? "", job.metadata.name ?? "").catch(ignoreNotFound);
          this.ctx.logger.info("Deleted finished job after its TTL", { namespace: job.metadata.namespace, job: job.metadata.name });
          return;
      }
    }
    await this.writeStatus(job, stored, status);
    for (const e of events) this.ctx.recorder.record(job, e.type, e.reason, e.message);
    this.notify(job, job.status ?? {}, status);
    this.ctx.metrics.jobStatusChanged(job, job.status ?? {}, status);
    return plan.requeueAfterMs !== undefined ? { requeueAfterMs: plan.requeueAfterMs } : undefined;
  }

  /**
   * Tells Buildkite (`finish`, exit -1) that a job could not run and why, so it does not sit reserved until it lapses
   * and runs nowhere. "later" when the queue's stack is not registered (yet): the job is looked at again.
   */
  private async reportToBuildkite(job: BuildkiteJob, status: BuildkiteJobStatus): Promise<ConditionUpdate | "later"> {
    const stack = this.ctx.stacks.stack(`${job.metadata.namespace ?? ""}/${job.spec.queueRef.name}`);
    if (!stack) return "later";
    const where = `BuildkiteJob ${job.metadata.namespace ?? ""}/${job.metadata.name ?? ""}`;
    const detail = neverAcquired(job)
      ? `The job's pod ended (${status.reason ?? "unknown"}: ${status.message ?? ""}) before its agent acquired the job, so it was not run; check the pod's agent token and logs (${where}).`
      : `${status.message ?? "The job could not run."} (${where}, reason ${status.reason ?? "unknown"})`;
    try {
      await stack.client.finish(stack.key, job.spec.uuid, detail);
      this.ctx.logger.info("Told Buildkite a job could not run", { namespace: job.metadata.namespace, job: job.metadata.name, reason: status.reason });
      return { type: REPORTED, status: "True", reason: "Finished", message: "Buildkite was told the job could not run, with the reason above." };
    } catch (err) {
      // A refusal (the job already finished or was canceled there) is final; anything retryable is tried again.
      if (err instanceof BuildkiteApiError && !err.retryable) {
        // "Already finished" can be this operator's own finish, seen again through a cache that had not caught up with
        // the status recording it (or whose answer was lost): Buildkite already has the job ended.
        const state = (await stack.client.getStates(stack.key, [job.spec.uuid]).catch(() => undefined))?.get(job.spec.uuid);
        if (state === "finished") return { type: REPORTED, status: "True", reason: "Finished", message: "Buildkite shows the job finished; it was not run here." };
        return { type: REPORTED, status: "False", reason: "FinishRefused", message: `Buildkite refused to finish the job: ${err.message}` };
      }
      throw err;
    }
  }

  /** Timeline notifications at the moments a person waits on: a free slot, the pod created, placed on a node. */
  private notify(job: BuildkiteJob, before: BuildkiteJobStatus, after: BuildkiteJobStatus): void {
    if (job.metadata.annotations?.[ANNOTATIONS.stack] === undefined) return;
    const stack = this.ctx.stacks.stack(`${job.metadata.namespace ?? ""}/${job.spec.queueRef.name}`);
    if (!stack) return;
    const uuid = job.spec.uuid;
    if (after.reason === "WaitingForSlot" && before.reason !== "WaitingForSlot") stack.notifier.add(uuid, after.message ?? "Waiting for a free slot.");
    if (after.podUID !== undefined && before.podUID === undefined) {
      stack.notifier.add(uuid, `Created pod ${after.podName ?? ""} (${after.shape ?? ""}) in namespace ${job.metadata.namespace ?? ""}.`);
      // Silent permission failures are the worst kind: a job whose role is broken says so where people look.
      const broken = this.ctx.credentials?.timelineMessage(`${job.metadata.namespace ?? ""}/${job.spec.queueRef.name}`);
      if (broken !== undefined) stack.notifier.add(uuid, broken);
    }
    if (after.nodeName !== undefined && before.nodeName === undefined) stack.notifier.add(uuid, `Pod placed on node ${after.nodeName}.`);
  }

  private async createPod(queue: BuildkiteQueue, job: BuildkiteJob, slot: number): Promise<PodCreation> {
    // The cache claims of the job's scope and slot first: a pod whose claim is missing would never be scheduled.
    const claims = await ensureCacheClaims(this.ctx, queue, job, slot);
    if (!("ready" in claims)) return claims;
    const body = buildPod(queue, job, slot);
    const namespace = job.metadata.namespace ?? "";
    try {
      const pod = await this.ctx.clients.core.createNamespacedPod({ namespace, body });
      this.ctx.logger.info("Created pod", { namespace, job: job.metadata.name, pod: pod.metadata?.name, slot });
      faultPoint("after-pod-create");
      return { pod };
    } catch (err) {
      // A pod of this name exists (the cache lags behind an earlier create): read it back instead of creating twice.
      if (isConflict(err)) return { pod: await this.ctx.clients.core.readNamespacedPod({ name: body.metadata?.name ?? "", namespace }) };
      // Admission (PodSecurity, quotas, webhooks) or validation refused it: retrying the same pod cannot help. The
      // operator's own RBAC lacking the verb ("denied") is a deployment mistake that fixing its role cures: retried.
      if (createRefusal(err) === "refused") return { rejected: `The API server refused the job's pod: ${apiMessage(err)}` };
      throw err;
    }
  }

  private async deletePod(job: BuildkiteJob): Promise<void> {
    const name = job.metadata.name ?? "";
    const namespace = job.metadata.namespace ?? "";
    const uid = job.status?.podUID;
    // The UID precondition makes sure only this job's pod is deleted, never a newer one of the same name.
    await this.ctx.clients.core.deleteNamespacedPod({ name, namespace, ...(uid ? { body: { preconditions: { uid } } } : {}) })
      .then(() => { this.ctx.logger.info("Deleted finished pod", { namespace, job: name, pod: name }); }, (err: unknown) => {
        if (!isNotFound(err) && !isConflict(err)) throw err;
      });
  }

  /** Writes the status only when it differs from what is stored (a no-op reconcile makes no API call). */
  private async writeStatus(job: BuildkiteJob, stored: BuildkiteJobStatus, status: BuildkiteJobStatus): Promise<void> {
    if (isDeepStrictEqual(status, stored)) return;
    await patchStatus(this.ctx.clients, BUILDKITE_JOB, job.metadata.namespace ?? "", job.metadata.name ?? "", status);
  }
}

function ignoreNotFound(err: unknown): void {
  if (!isNotFound(err)) throw err;
}
