import type { V1Pod } from "@kubernetes/client-node";
import type { BuildkiteJobStatus } from "../api/generated/buildkite-job.js";

export type JobPhase = NonNullable<BuildkiteJobStatus["phase"]>;

export const TERMINAL_PHASES: ReadonlySet<JobPhase> = new Set(["Succeeded", "Failed", "Canceled", "TimedOut"]);

export const isTerminal = (phase: JobPhase | undefined): boolean => phase !== undefined && TERMINAL_PHASES.has(phase);

/** What a pod says about its job: the phase, and for terminal pods the exit code and a reason a person can act on. */
export interface PodOutcome {
  phase: JobPhase;
  nodeName?: string;
  exitCode?: number;
  reason: string;
  message: string;
  startedAt?: string;
  finishedAt?: string;
}

/** Reads a job's phase off its pod (the `agent` container carries the job's exit code). Pure. */
export function podOutcome(pod: V1Pod, maxJobDurationSeconds: number | undefined): PodOutcome {
  const status = pod.status ?? {};
  const nodeName = pod.spec?.nodeName;
  const node = nodeName ? { nodeName } : {};
  const agent = status.containerStatuses?.find((c) => c.name === "agent") ?? status.containerStatuses?.[0];
  const terminated = agent?.state?.terminated;
  const startedAt = agent?.state?.running?.startedAt ?? terminated?.startedAt ?? status.startTime;
  const started = startedAt ? { startedAt: new Date(startedAt).toISOString() } : {};
  const finished = terminated?.finishedAt ? { finishedAt: new Date(terminated.finishedAt).toISOString() } : {};
  const exit = terminated ? { exitCode: terminated.exitCode } : {};
  // The agent ends the job: once it has exited, what still runs (services, a client still waiting for it) is
  // stopped with the pod, and the job's outcome is the agent's.
  const phase =
    status.phase === "Running" && terminated ? (terminated.exitCode === 0 ? "Succeeded" : "Failed") : status.phase;
  const failedInit = status.initContainerStatuses?.find(
    (c) => c.state?.terminated !== undefined && c.state.terminated.exitCode !== 0,
  );
  switch (phase) {
    case "Succeeded":
      return {
        phase: "Succeeded",
        ...node,
        ...exit,
        ...started,
        ...finished,
        reason: "Completed",
        message: "The job's command exited 0.",
      };
    case "Failed":
      if (status.reason === "DeadlineExceeded") {
        const limit = maxJobDurationSeconds !== undefined ? ` (${maxJobDurationSeconds} s)` : "";
        return {
          phase: "TimedOut",
          ...node,
          ...exit,
          ...started,
          ...finished,
          reason: "DeadlineExceeded",
          message: `The job ran longer than the queue's maxJobDurationSeconds${limit} and was stopped; raise it or speed the job up.`,
        };
      }
      if (terminated?.reason === "OOMKilled") {
        return {
          phase: "Failed",
          ...node,
          ...exit,
          ...started,
          ...finished,
          reason: "OOMKilled",
          message: "The job ran out of memory at its shape's limit; choose a larger instanceShape.",
        };
      }
      if (failedInit?.state?.terminated && !terminated) {
        const t = failedInit.state.terminated;
        return {
          phase: "Failed",
          ...node,
          ...started,
          reason: "InitContainerFailed",
          message: `Container ${failedInit.name} (${failedInit.image}) exited with code ${t.exitCode}${t.reason ? ` (${t.reason})` : ""} before the agent started, so the job was not run.`,
        };
      }
      if (!terminated) {
        return {
          phase: "Failed",
          ...node,
          ...started,
          reason: status.reason ?? "PodFailed",
          message: status.message ?? "The pod failed before the agent ran.",
        };
      }
      return {
        phase: "Failed",
        ...node,
        ...exit,
        ...started,
        ...finished,
        reason: "NonZeroExit",
        message: `The agent exited with code ${terminated.exitCode}${terminated.reason ? ` (${terminated.reason})` : ""}.`,
      };
    case "Running":
      return {
        phase: "Running",
        ...node,
        ...started,
        reason: "Running",
        message: `The agent is running the job on ${nodeName ?? "its node"}.`,
      };
    default: {
      if (nodeName)
        return {
          phase: "Starting",
          ...node,
          reason: "Starting",
          message: `The pod was placed on ${nodeName} and is starting.`,
        };
      const scheduled = status.conditions?.find((c) => c.type === "PodScheduled");
      if (scheduled?.status === "False") {
        return {
          phase: "Pending",
          reason: scheduled.reason ?? "Unschedulable",
          message: `No node can run the pod yet: ${scheduled.message ?? "no reason given"}`,
        };
      }
      return { phase: "Pending", reason: "Scheduling", message: "The pod is waiting for a node." };
    }
  }
}
