import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueueSpec } from "../api/generated/buildkite-queue.js";
import { shapeResources, type InstanceShape } from "../api/shapes.js";
import { isTerminal } from "./phase.js";

/** What the slot decision needs to know about one BuildkiteJob of the queue. */
export interface SlotView {
  job: BuildkiteJob;
  /** Whether the job's pod still exists (a terminal job holds its slot until its pod is gone: RWO caches). */
  hasPod: boolean;
  /** A slot given out by this process but not yet visible in the cache. */
  reserved?: number;
}

/** The queue settings a slot decision depends on: its budget and the shape new jobs start with. */
export type SlotLimits = Pick<BuildkiteQueueSpec, "maxVCPU" | "instanceShape">;

export type SlotDecision = { slot: number } | { waiting: { position: number; free: number } };

const slotOf = (v: SlotView): number | undefined => v.job.status?.slot ?? v.reserved;

/** A job occupies a slot from the moment it holds one until it is terminal and its pod is gone. */
export const occupies = (v: SlotView): boolean => slotOf(v) !== undefined && (!isTerminal(v.job.status?.phase) || v.hasPod);

/**
 * The vCPU a job holds, or will hold once it starts: the shape it recorded when it took its slot (its pod was built
 * with it), else the queue's current shape (a job that has no slot yet starts with the shape the queue has then).
 */
export function jobVCPU(job: BuildkiteJob, current: InstanceShape): number {
  const recorded = job.status?.slot !== undefined ? job.status.shape : undefined;
  if (recorded !== undefined) {
    try {
      return shapeResources(recorded as InstanceShape).vcpu;
    } catch {
      // A shape this version does not know (written by a newer one): the current shape is the best estimate.
    }
  }
  return shapeResources(current).vcpu;
}

/**
 * How many slot indexes a queue may use at once: floor(maxVCPU ÷ the smallest vCPU among the current shape and the
 * jobs occupying slots). It equals the concurrency of the current shape except while jobs of a smaller, older shape
 * still run; a job given the lowest free index is always below it, since every occupying job holds at least that much.
 */
export function slotLimit(limits: SlotLimits, queueJobs: readonly SlotView[]): number {
  const smallest = Math.min(shapeResources(limits.instanceShape).vcpu, ...queueJobs.filter(occupies).map((v) => jobVCPU(v.job, limits.instanceShape)));
  return Math.floor(limits.maxVCPU / smallest);
}

/** Highest priority first; among equals the older job first (then the name, so the order is total). */
function byPriority(a: BuildkiteJob, b: BuildkiteJob): number {
  return b.spec.priority - a.spec.priority
    || String(a.metadata.creationTimestamp ?? "").localeCompare(String(b.metadata.creationTimestamp ?? ""))
    || (a.metadata.name ?? "").localeCompare(b.metadata.name ?? "");
}

/**
 * Decides whether `job` may start now and in which slot (the slot index picks its cache claims). A job starts only
 * when the vCPU of the jobs occupying slots, each at the shape it runs with, plus its own at the queue's current shape
 * stays within maxVCPU: counting jobs instead would overcommit right after the shape changes to a smaller one, and
 * hold jobs back needlessly after it grows. Waiting jobs get the room in priority order. Derived from the jobs as
 * they are now, never from a counter. Pure.
 */
export function decideSlot(job: BuildkiteJob, queueJobs: readonly SlotView[], limits: SlotLimits): SlotDecision {
  if (job.status?.slot !== undefined) return { slot: job.status.slot };
  const others = queueJobs.filter((v) => v.job.metadata.name !== job.metadata.name);
  const occupying = others.filter(occupies);
  const held = occupying.reduce((sum, v) => sum + jobVCPU(v.job, limits.instanceShape), 0);
  const free = Math.max(0, Math.floor((limits.maxVCPU - held) / shapeResources(limits.instanceShape).vcpu));
  const waiting = others
    .filter((v) => slotOf(v) === undefined && !isTerminal(v.job.status?.phase))
    .map((v) => v.job)
    .concat(job)
    .sort(byPriority);
  const position = waiting.findIndex((j) => j.metadata.name === job.metadata.name);
  if (position >= free) return { waiting: { position: position - free + 1, free } };
  // The lowest free index: below slotLimit() whenever the vCPU fits, so slot indexes (and cache claims) stay few.
  const used = new Set(occupying.map(slotOf));
  let slot = 0;
  while (used.has(slot)) slot++;
  return { slot };
}
