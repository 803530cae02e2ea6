import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { ANNOTATIONS } from "../api/keys.js";
import { isTerminal } from "./phase.js";

/**
 * What the job controller and the job source agree on about a BuildkiteJob's Buildkite side: which jobs must be
 * reported to Buildkite as unable to run, how the job source records its report and a pending reservation on the
 * job, and how the job controller reads them back.
 */

/** Failures where the job's command never ran: Buildkite is told with `finish`, or the job would wait there forever. */
export const NEVER_RAN: ReadonlySet<string> = new Set([
  "PodRejected",
  "ImagePullFailed",
  "ContainerConfigError",
  "Unschedulable",
  "PendingTimeout",
  "PodDeletedBeforeStart",
  "StepRefused",
  "InitContainerFailed",
]);

/** Reason of a job whose step asked for something its queue does not allow (no pod was made). */
export const STEP_REFUSED = "StepRefused";

/** The condition that records that Buildkite was told about a job that could not run. */
export const REPORTED = "ReportedToBuildkite";

/** Reason of a job stopped because its queue was deleted. */
export const QUEUE_DELETED = "QueueDeleted";

/** Whether the job is one the stack must still report to Buildkite as unable to run. */
export function needsReport(job: BuildkiteJob): boolean {
  const status = job.status ?? {};
  const annotations = job.metadata.annotations ?? {};
  const stoppedBeforeStart = status.reason === QUEUE_DELETED && status.startedAt === undefined;
  // Only once the job has ended: a pod waiting for a node carries the reason Unschedulable long before it fails.
  return (
    annotations[ANNOTATIONS.stack] !== undefined &&
    isTerminal(status.phase) &&
    (NEVER_RAN.has(status.reason ?? "") || neverAcquired(job) || stoppedBeforeStart) &&
    !status.conditions?.some((c) => c.type === REPORTED)
  );
}

/** Value of the reservation annotation while Buildkite has not confirmed the reservation. */
export const RESERVATION_PENDING = "Pending";

/** What the job source recorded of its `finish` call, as the condition to keep; undefined before it did. */
export function reportOf(job: BuildkiteJob): ConditionUpdate | undefined {
  const raw = job.metadata.annotations?.[ANNOTATIONS.reported];
  if (raw === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    parsed = undefined;
  }
  const { reason, message } = (typeof parsed === "object" && parsed !== null ? parsed : {}) as {
    reason?: unknown;
    message?: unknown;
  };
  const finished = reason === "Finished";
  return {
    type: REPORTED,
    status: finished ? "True" : "False",
    reason: typeof reason === "string" && /^[A-Za-z]+$/.test(reason) ? reason : "FinishRefused",
    message:
      typeof message === "string"
        ? message
        : `Annotation ${ANNOTATIONS.reported} is not the JSON the job source writes: ${raw}`,
  };
}

/** The annotation value recording what Buildkite answered to `finish`. */
export const reportAnnotation = (reason: "Finished" | "FinishRefused", message: string): string =>
  JSON.stringify({ reason, message });

/** A job whose pod ended while Buildkite still had the job waiting: its agent never acquired it. */
export function neverAcquired(job: BuildkiteJob): boolean {
  const state = job.metadata.annotations?.[ANNOTATIONS.buildkiteState];
  return (
    (state === "scheduled" || state === "reserved") && isTerminal(job.status?.phase) && job.status?.phase !== "Canceled"
  );
}
