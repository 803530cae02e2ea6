import type { V1ContainerStatus, V1Pod } from "@kubernetes/client-node";
import type { BuildkiteJobStatus } from "../api/generated/buildkite-job.js";

/** How much of a container's log the job's status (and so Buildkite's finish detail) carries. */
export const LAST_WORDS = { lines: 15, bytes: 2048 } as const;

/**
 * The container whose last log lines explain a failed pod: an init container that exited non-zero (copy-agent, the
 * image check, a service that would not start), else the agent when it exited non-zero (refused by Buildkite, a job
 * it could not run). Only a container a runtime started has a log (its status has a containerID). Pure.
 */
export function lastWordsSource(pod: V1Pod): { container: string; previous: boolean } | undefined {
  const failed = (c: V1ContainerStatus): boolean =>
    c.containerID !== undefined && c.containerID !== "" && (c.state?.terminated?.exitCode ?? 0) !== 0;
  // A service that keeps exiting is waiting to restart; its log is that of its last run.
  const crashed = (c: V1ContainerStatus): boolean =>
    c.state?.waiting?.reason === "CrashLoopBackOff" &&
    (c.lastState?.terminated?.containerID ?? "") !== "" &&
    (c.lastState?.terminated?.exitCode ?? 0) !== 0;
  const init = pod.status?.initContainerStatuses?.find((c) => failed(c) || crashed(c));
  if (init) return { container: init.name, previous: crashed(init) };
  const agent = pod.status?.containerStatuses?.find((c) => c.name === "agent" && failed(c));
  return agent ? { container: agent.name, previous: false } : undefined;
}

/** The status with the container's last lines added to its message (which the Event and Buildkite's detail use). */
export function withLastWords(status: BuildkiteJobStatus, container: string, log: string): BuildkiteJobStatus {
  const lines = log
    .replace(/\r/g, "")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .slice(-LAST_WORDS.lines);
  if (lines.length === 0) return status;
  const words = lines.join("\n").slice(-LAST_WORDS.bytes);
  return { ...status, message: `${status.message ?? ""}\nLast lines of container ${container}:\n${words}` };
}
