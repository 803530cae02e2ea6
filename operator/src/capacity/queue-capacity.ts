import type { V1Pod } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue, BuildkiteQueueSpec } from "../api/generated/buildkite-queue.js";
import { LABELS } from "../api/keys.js";
import { shapeResources, type InstanceShape } from "../api/shapes.js";
import { isTerminal } from "../job/phase.js";
import type { Caches } from "../kube/controller.js";
import type { Expectations, Expected } from "../kube/expectations.js";
import { keyOf, splitKey } from "../kube/resources.js";

/**
 * A queue's capacity, the one place it is computed: which slot a job may take (job controller), how many new jobs
 * the queue has room for (job source), how far slot indexes reach (queue controller, cache claims) and how many jobs
 * are active or waiting (queue status). Derived every time from the caches, plus what this process did that the
 * caches do not show yet ({@link Expectations}); never kept as a counter. Counted in vCPU, each job at the shape it
 * runs with (docs/adr/0001-slots-counted-in-vcpu.md).
 */

/** The queue settings capacity depends on: its budget and the shape new jobs start with. */
export type SlotLimits = Pick<BuildkiteQueueSpec, "maxVCPU" | "instanceShape">;

export type SlotDecision = { slot: number } | { waiting: { position: number; free: number } };

/** One BuildkiteJob of a queue as capacity counts it. */
export interface Seat {
  job: BuildkiteJob;
  /** The slot it holds (see {@link seatOf}), if any. */
  slot?: number;
  /** The shape it took its slot with, when known; otherwise it counts at the queue's current shape. */
  shape?: string;
  /** Whether its pod still exists (a terminal job holds its slot until its pod is gone: ReadWriteOnce caches). */
  hasPod: boolean;
}

/** Everything capacity decisions read about one queue. */
export interface QueueCapacity {
  limits: SlotLimits;
  seats: readonly Seat[];
  /** Names of the BuildkiteJobs this process created for the queue that the job cache does not show yet. */
  expectedJobs: readonly string[];
}

/** The slot and shape a job's pod was built for, from the labels the pod builder puts on it. */
export function podSlot(pod: V1Pod | undefined): { slot?: number; shape?: string } {
  const labels = pod?.metadata?.labels ?? {};
  const value = labels[LABELS.slot] ?? "";
  const slot = /^\d+$/.test(value) ? Number(value) : undefined;
  const shape = labels[LABELS.shape];
  return { ...(slot !== undefined ? { slot } : {}), ...(slot !== undefined && shape !== undefined ? { shape } : {}) };
}

/** Whether `pod` is `job`'s own (a pod of the same name may be left from an earlier BuildkiteJob). */
const ownPod = (job: BuildkiteJob, pod: V1Pod | undefined): V1Pod | undefined =>
  pod?.metadata?.ownerReferences?.some((o) => o.controller === true && o.uid === job.metadata.uid) === true
    ? pod
    : undefined;

/**
 * What a job holds, the first found: the slot its status records, with the shape recorded with it; else the slot on
 * its pod (the status write after the pod's create was lost, e.g. to a crash: the pod is the record of its slot);
 * else the slot this process handed it, which the caches do not show yet.
 */
export function seatOf(job: BuildkiteJob, pod: V1Pod | undefined, expected?: Expected): Seat {
  const hasPod = pod !== undefined;
  const status = job.status ?? {};
  if (status.slot !== undefined)
    return { job, slot: status.slot, ...(status.shape !== undefined ? { shape: status.shape } : {}), hasPod };
  const onPod = podSlot(ownPod(job, pod));
  if (onPod.slot !== undefined) return { job, ...onPod, hasPod };
  return expected?.kind === "assigned" ? { job, slot: expected.slot, hasPod } : { job, hasPod };
}

/**
 * Reads one queue's capacity from the caches and `expectations`. Expectations the caches now show are dropped on the
 * way: a created job once the job cache has it, a handed-out slot once the job or its pod records it (or the job ended).
 */
export function queueCapacity(
  queue: BuildkiteQueue,
  caches: Pick<Caches, "jobs" | "live" | "pods">,
  expectations: Expectations,
): QueueCapacity {
  const namespace = queue.metadata.namespace ?? "";
  // Only the jobs that count (not terminal, or with a pod): finished ones kept for their TTL cost nothing here.
  const jobs = caches.live.of(namespace, queue.metadata.name ?? "");
  const byKey = new Map(
    jobs.map((j) => [keyOf(j), { job: j, pod: caches.pods.get(j.metadata.name ?? "", namespace) }]),
  );
  const pending = expectations.pending(keyOf(queue), (key, expected) => {
    const cached = byKey.get(key);
    // A job the cache shows, live or already ended, is no longer only expected.
    const ended = (): boolean => {
      const job = caches.jobs.get(splitKey(key).name, namespace);
      return job !== undefined && isTerminal(job.status?.phase);
    };
    if (expected.kind === "created") return cached !== undefined || ended();
    // A job gone from the cache keeps its slot until the job controller forgets it (it sees the job deleted).
    return cached !== undefined ? seatOf(cached.job, cached.pod).slot !== undefined || ended() : ended();
  });
  const seats = [...byKey].map(([key, { job, pod }]) => seatOf(job, pod, pending.get(key)));
  const expectedJobs = [...pending]
    .filter(([key, e]) => e.kind === "created" && !byKey.has(key))
    .map(([key]) => splitKey(key).name);
  return { limits: queue.spec, seats, expectedJobs };
}

/** A job occupies a slot from the moment it holds one until it is terminal and its pod is gone. */
export const occupies = (seat: Seat): boolean =>
  seat.slot !== undefined && (!isTerminal(seat.job.status?.phase) || seat.hasPod);

/**
 * The vCPU a job holds, or will hold once it starts: at the shape it took its slot with, else the queue's current
 * shape (a job without a slot starts with the shape the queue has then).
 */
export function seatVCPU(seat: Pick<Seat, "shape">, current: InstanceShape): number {
  if (seat.shape !== undefined) {
    try {
      return shapeResources(seat.shape as InstanceShape).vcpu;
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
export function slotLimit(capacity: QueueCapacity): number {
  const { limits } = capacity;
  const smallest = Math.min(
    shapeResources(limits.instanceShape).vcpu,
    ...capacity.seats.filter(occupies).map((s) => seatVCPU(s, limits.instanceShape)),
  );
  return Math.floor(limits.maxVCPU / smallest);
}

/** How many jobs of the queue's current shape fit in the vCPU left when `held` vCPU are taken (never negative). */
export const freeSlots = (limits: SlotLimits, held: number): number =>
  Math.max(0, Math.floor((limits.maxVCPU - held) / shapeResources(limits.instanceShape).vcpu));

/** Highest priority first; among equals the older job first (then the name, so the order is total). */
function byPriority(a: BuildkiteJob, b: BuildkiteJob): number {
  return (
    b.spec.priority - a.spec.priority ||
    String(a.metadata.creationTimestamp ?? "").localeCompare(String(b.metadata.creationTimestamp ?? "")) ||
    (a.metadata.name ?? "").localeCompare(b.metadata.name ?? "")
  );
}

/**
 * Decides whether `job` may start now and in which slot (the slot index picks its cache claims). A job starts only
 * when the vCPU of the jobs occupying slots, each at the shape it runs with, plus its own at the queue's current shape
 * stays within maxVCPU; waiting jobs get the room in priority order. A job that already holds a slot keeps it.
 */
export function decideSlot(capacity: QueueCapacity, job: BuildkiteJob): SlotDecision {
  const { limits } = capacity;
  const name = job.metadata.name;
  const own = job.status?.slot ?? capacity.seats.find((s) => s.job.metadata.name === name)?.slot;
  if (own !== undefined) return { slot: own };
  const others = capacity.seats.filter((s) => s.job.metadata.name !== name);
  const occupying = others.filter(occupies);
  const free = freeSlots(
    limits,
    occupying.reduce((sum, s) => sum + seatVCPU(s, limits.instanceShape), 0),
  );
  const waiting = others
    .filter((s) => s.slot === undefined && !isTerminal(s.job.status?.phase))
    .map((s) => s.job)
    .concat(job)
    .sort(byPriority);
  const position = waiting.findIndex((j) => j.metadata.name === name);
  if (position >= free) return { waiting: { position: position - free + 1, free } };
  // The lowest free index: below slotLimit() whenever the vCPU fits, so slot indexes (and cache claims) stay few.
  const used = new Set(occupying.map((s) => s.slot));
  let slot = 0;
  while (used.has(slot)) slot++;
  return { slot };
}

/**
 * The vCPU held by the queue's unfinished jobs: each at the shape it took its slot with, every other one (and each job
 * just created that the cache does not show yet) at the queue's current shape, which is the shape it will start with.
 */
export function heldVCPU(capacity: QueueCapacity): number {
  const current = capacity.limits.instanceShape;
  return capacity.seats
    .filter((s) => !isTerminal(s.job.status?.phase))
    .reduce((sum, s) => sum + seatVCPU(s, current), capacity.expectedJobs.length * shapeResources(current).vcpu);
}

/** How many more jobs the queue has room for, counting every unfinished job from its creation (the job source's view). */
export const roomForNewJobs = (capacity: QueueCapacity): number => freeSlots(capacity.limits, heldVCPU(capacity));

/** Unfinished jobs that hold a slot (active) and that wait for one, for the queue's status. */
export function jobCounts(capacity: QueueCapacity): { active: number; waiting: number } {
  const unfinished = capacity.seats.filter((s) => !isTerminal(s.job.status?.phase));
  const active = unfinished.filter((s) => s.slot !== undefined).length;
  return { active, waiting: unfinished.length - active };
}
