import type { BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import { QUEUE_DELETED } from "./buildkite-contract.js";
import { isTerminal, podOutcome } from "./phase.js";
import type { JobEvent, JobObservation, JobPlan } from "./plan.js";

/**
 * A job told to stop (its queue is being deleted): its pod is deleted (the agent's preStop cancels a running job and
 * reports it to Buildkite at once), and once the pod is gone the job ends Canceled. A job that never started is
 * reported to Buildkite with `finish` (see {@link needsReport}).
 */
export function stopping(obs: JobObservation, why: string, now: Date): JobPlan {
  const { job, pod } = obs;
  const current = job.status ?? {};
  const outcome = pod ? podOutcome(pod, obs.queue?.spec.maxJobDurationSeconds) : undefined;
  if (pod && outcome && !isTerminal(outcome.phase)) {
    const status: BuildkiteJobStatus = {
      ...current,
      ...started(outcome.startedAt),
      reason: "Stopping",
      message: `Stopping the pod: ${why}`,
    };
    const events: JobEvent[] =
      current.reason === "Stopping" ? [] : [{ type: "Normal", reason: "Stopping", message: status.message ?? "" }];
    return { status, actions: pod.metadata?.deletionTimestamp ? [] : ["deletePod"], events, requeueAfterMs: 2_000 };
  }
  const exit = outcome?.exitCode;
  const status: BuildkiteJobStatus = {
    ...current,
    ...started(outcome?.startedAt),
    phase: "Canceled",
    reason: QUEUE_DELETED,
    finishedAt: now.toISOString(),
    message: `${why} ${current.podUID !== undefined ? `Its pod was stopped${exit !== undefined ? ` (exit ${String(exit)})` : ""}.` : "No pod was created."}`,
    ...(exit !== undefined ? { exitCode: exit } : {}),
  };
  return {
    status,
    actions: pod ? ["deletePod"] : [],
    events: [{ type: "Normal", reason: QUEUE_DELETED, message: status.message ?? "" }],
  };
}

const started = (at: string | undefined): { startedAt?: string } => (at !== undefined ? { startedAt: at } : {});
