import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { ANNOTATIONS } from "../api/keys.js";
import { isTerminal } from "../job/phase.js";
import { needsReport } from "../job/plan.js";

/** What a deleted queue's finalizer does now. */
export interface DeletionPlan {
  /** Jobs to annotate with `buildkite.com/stop` (not ended and not told yet). */
  stop: string[];
  /** Why the finalizer must wait (pods, unended jobs, unreported jobs), or undefined once nothing holds it. */
  wait?: string;
}

/**
 * The order of a queue's deletion: every job is told to stop; the finalizer holds until the queue's pods are gone,
 * every job has ended and (while its stack is connected) every job that could not run is reported to Buildkite; only
 * then is the stack deregistered and the NetworkPolicy let go. Pure.
 */
export function planDeletion(input: { jobs: readonly BuildkiteJob[]; pods: number; reporting: boolean }): DeletionPlan {
  const stop = input.jobs
    .filter((j) => !isTerminal(j.status?.phase) && j.metadata.annotations?.[ANNOTATIONS.stop] === undefined)
    .map((j) => j.metadata.name ?? "");
  const unfinished = input.jobs.filter((j) => !isTerminal(j.status?.phase)).length;
  // Reports to Buildkite are waited for while the stack is connected; without one (a deleted token) they cannot go.
  const unreported = input.reporting ? input.jobs.filter(needsReport).length : 0;
  if (input.pods + unfinished + unreported === 0) return { stop };
  return {
    stop,
    wait: `Stopping the queue's jobs before its NetworkPolicy goes: ${String(input.pods)} pods, ${String(unfinished)} jobs not ended, ${String(unreported)} not yet reported to Buildkite.`,
  };
}
