import type { V1Pod } from "@kubernetes/client-node";
import { isDeepStrictEqual } from "node:util";
import type { BuildkiteJob, BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import { isTerminal } from "./phase.js";
import type { JobEvent, JobPlan } from "./plan.js";

/**
 * The decisions the job controller's shell makes around {@link planJob}'s plan — when to read live, which slot to
 * set aside, what a pod's create means for the job — as pure functions, so each is tested without a network.
 */

/**
 * Whether the plan must be made again from the job read live before it is performed. Creating the pod and failing a
 * job whose pod vanished cannot be undone (a second run, a lost result), so neither is decided on a cache that may lag.
 */
export const needsLiveRead = (plan: JobPlan): boolean =>
  plan.actions.includes("createPod") || plan.status.reason === "PodDeleted";

/**
 * Whether a pod missing from the cache must be looked up live: the job recorded a pod and has not ended, so the pod
 * is either not in the cache yet or really gone (which fails the job, so it must be sure).
 */
export const mustConfirmPodGone = (job: BuildkiteJob, cached: V1Pod | undefined): boolean =>
  cached === undefined && (job.status?.podUID ?? "") !== "" && !isTerminal(job.status?.phase);

/**
 * The slot this process sets aside for a job after planning it: the slot of the pod the plan creates, unless the
 * caches already show the job holding it (`shown`, from its status or its pod). Undefined: nothing is set aside, and a
 * slot set aside for it before goes back to the queue (its pod is not being created).
 */
export const slotToHold = (plan: JobPlan, shown: number | undefined): number | undefined =>
  plan.actions.includes("createPod") && shown === undefined ? plan.status.slot : undefined;

/** What came of creating a job's pod (after its cache claims). */
export type PodCreation = { pod: V1Pod } | { rejected: string } | { wait: string };

/** How long a job whose cache claim is going away waits before it looks again. */
export const CLAIM_WAIT_MS = 2_000;

/** After a pod's create: the job's new status and Event, or how long to wait (and the slot goes back meanwhile). */
export type AfterCreate = { status: BuildkiteJobStatus; events: JobEvent[] } | { waitMs: number; why: string };

/**
 * The job after its pod's create: the pod recorded on it; or, refused, the job Failed with the API server's words
 * (retrying the same pod cannot help); or a wait while one of its cache claims is being deleted (a surplus claim, or
 * one a person deleted), after which the claim is made anew.
 */
export function afterPodCreate(status: BuildkiteJobStatus, created: PodCreation, now: Date): AfterCreate {
  if ("wait" in created) return { waitMs: CLAIM_WAIT_MS, why: created.wait };
  if ("rejected" in created) {
    const message = `${created.rejected}. Fix the queue's settings (or the namespace's policies); the job was not run.`;
    return {
      status: { ...status, phase: "Failed", reason: "PodRejected", message, finishedAt: now.toISOString() },
      events: [{ type: "Warning", reason: "PodRejected", message }],
    };
  }
  const meta = created.pod.metadata ?? {};
  return {
    status: { ...status, podName: meta.name ?? "", podUID: meta.uid ?? "", podCreatedAt: now.toISOString() },
    events: [],
  };
}

/**
 * The least time between two status writes of a job whose pod is only progressing (Pending, Starting, Running): a
 * pod that starts and ends within it has its start written with its end, in one write instead of two or three.
 */
export const PROGRESS_WRITE_INTERVAL_MS = 1_000;

/**
 * How long to hold back the plan's status (0: write it now). Only a pod's progress waits: the same pod as the stored
 * status records, not terminal, nothing else to do. Everything else (the pod's create, the outcome, a stop, a new
 * condition) is written at once. `lastWrittenMs` is when this process last wrote the job's status, if it did.
 */
export function progressDelayMs(
  plan: JobPlan,
  stored: BuildkiteJobStatus,
  lastWrittenMs: number | undefined,
  nowMs: number,
): number {
  const { status } = plan;
  if (lastWrittenMs === undefined || plan.actions.length > 0 || isTerminal(status.phase)) return 0;
  if (stored.podUID === undefined || status.podUID !== stored.podUID || status.slot !== stored.slot) return 0;
  if (status.reason === "Stopping" || !isDeepStrictEqual(status.conditions, stored.conditions)) return 0;
  return Math.max(0, lastWrittenMs + PROGRESS_WRITE_INTERVAL_MS - nowMs);
}
