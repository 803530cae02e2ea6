import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { isTerminal } from "./phase.js";

/** What the slot decision needs to know about one BuildkiteJob of the queue. */
export interface SlotView {
  job: BuildkiteJob;
  /** Whether the job's pod still exists (a terminal job holds its slot until its pod is gone: RWO caches). */
  hasPod: boolean;
  /** A slot given out by this process but not yet visible in the cache. */
  reserved?: number;
}

export type SlotDecision = { slot: number } | { waiting: { position: number; free: number } };

const slotOf = (v: SlotView): number | undefined => v.job.status?.slot ?? v.reserved;

/** A job occupies a slot from the moment it holds one until it is terminal and its pod is gone. */
const occupies = (v: SlotView): boolean => slotOf(v) !== undefined && (!isTerminal(v.job.status?.phase) || v.hasPod);

/** Highest priority first; among equals the older job first (then the name, so the order is total). */
function byPriority(a: BuildkiteJob, b: BuildkiteJob): number {
  return b.spec.priority - a.spec.priority
    || String(a.metadata.creationTimestamp ?? "").localeCompare(String(b.metadata.creationTimestamp ?? ""))
    || (a.metadata.name ?? "").localeCompare(b.metadata.name ?? "");
}

/**
 * Decides whether `job` may start now and in which concurrency slot (the slot picks its cache claims). At most
 * `concurrency` jobs of a queue hold a slot; waiting jobs get free slots in priority order. Derived from the jobs as
 * they are now, never from a counter. Pure.
 */
export function decideSlot(job: BuildkiteJob, queueJobs: readonly SlotView[], concurrency: number): SlotDecision {
  if (job.status?.slot !== undefined) return { slot: job.status.slot };
  const others = queueJobs.filter((v) => v.job.metadata.name !== job.metadata.name);
  const used = new Set(others.filter(occupies).map(slotOf));
  const free = Math.max(0, concurrency - used.size);
  const waiting = others
    .filter((v) => slotOf(v) === undefined && !isTerminal(v.job.status?.phase))
    .map((v) => v.job)
    .concat(job)
    .sort(byPriority);
  const position = waiting.findIndex((j) => j.metadata.name === job.metadata.name);
  if (position >= free) return { waiting: { position: position - free + 1, free } };
  let slot = 0;
  while (used.has(slot)) slot++;
  return { slot };
}
