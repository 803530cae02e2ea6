import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { ANNOTATIONS, LABELS, MANAGED_BY } from "../api/keys.js";
import { jobResourceName } from "../api/names.js";
import type { JobState, ScheduledJob } from "../buildkite/types.js";
import { shapeResources, type InstanceShape } from "../api/shapes.js";
import { freeSlots, heldVCPU, queueCapacity, seatOf, type SlotLimits } from "../capacity/queue-capacity.js";
import { isTerminal } from "../job/phase.js";
import type { Caches } from "../kube/controller.js";
import type { Expectations } from "../kube/expectations.js";

/**
 * Pure decisions of the job source: which scheduled jobs to reserve, which reservations to extend, and which jobs
 * Buildkite has taken back. The shell in `job-source.ts` gathers the inputs from the caches and the Stacks API.
 */

/** Highest priority first; among equals the job scheduled earlier (then the uuid, so the order is total). */
export function byPriority(a: ScheduledJob, b: ScheduledJob): number {
  return b.priority - a.priority || a.scheduled_at.localeCompare(b.scheduled_at) || a.id.localeCompare(b.id);
}

export interface ReserveDecision {
  /** New jobs to reserve and turn into BuildkiteJobs, in the order they should start. */
  take: ScheduledJob[];
  /** Jobs back in `scheduled` that already have a BuildkiteJob here (their reservation lapsed): reserve them again. */
  reclaim: string[];
}

/**
 * Chooses what to reserve from one listing. A queue's jobs hold at most `maxVCPU` between them; every BuildkiteJob
 * that is not terminal counts from the moment it exists, at the shape it runs with (see {@link dispatchRoom}), so
 * only as many new jobs are taken as fit in the vCPU left at the queue's current shape, highest priority first; the
 * rest stay scheduled in Buildkite, where another stack (or this one, later) may take them.
 */
export function chooseReservations(input: {
  scheduled: readonly ScheduledJob[];
  /** Names of this queue's BuildkiteJobs, finished or not (a finished one must not be created again). */
  existing: ReadonlySet<string>;
  /** Names of those that are terminal: their job is neither taken nor reclaimed (it ran, or it was given up on). */
  finished?: ReadonlySet<string>;
  /** vCPU held by this queue's BuildkiteJobs that are not terminal, including ones created but not yet in the cache. */
  unfinishedVCPU: number;
  /** The queue's budget and the shape new jobs start with. */
  limits: SlotLimits;
  paused: boolean;
}): ReserveDecision {
  const reclaim: string[] = [];
  const fresh: ScheduledJob[] = [];
  for (const job of input.scheduled) {
    const name = jobResourceName(job.id);
    if (input.finished?.has(name) === true) continue;
    if (input.existing.has(name)) reclaim.push(job.id);
    else fresh.push(job);
  }
  if (input.paused) return { take: [], reclaim };
  return { take: [...fresh].sort(byPriority).slice(0, freeSlots(input.limits, input.unfinishedVCPU)), reclaim };
}

/** What {@link chooseReservations} needs to know of a queue besides the listing, as {@link dispatchRoom} reads it. */
export interface DispatchRoom {
  /** Names of the queue's BuildkiteJobs: in the cache, or created by this process and not in the cache yet. */
  existing: ReadonlySet<string>;
  /** Names of those that are terminal. */
  finished: ReadonlySet<string>;
  /** vCPU held by the unfinished ones, including those created and not in the cache yet (see {@link heldVCPU}). */
  unfinishedVCPU: number;
}

/**
 * The job source's entry to the queue's capacity: reads it from the caches and the shared `expectations` (record each
 * created BuildkiteJob there with `expectations.created(queueKey, jobKey)`), so a job just created takes room until the
 * cache shows it. Spread the result into {@link chooseReservations}.
 */
export function dispatchRoom(queue: BuildkiteQueue, caches: Pick<Caches, "jobs" | "pods">, expectations: Expectations): DispatchRoom {
  const capacity = queueCapacity(queue, caches, expectations);
  const names = capacity.seats.map((s) => s.job.metadata.name ?? "");
  return {
    existing: new Set([...names, ...capacity.expectedJobs]),
    finished: new Set(capacity.seats.filter((s) => isTerminal(s.job.status?.phase)).map((s) => s.job.metadata.name ?? "")),
    unfinishedVCPU: heldVCPU(capacity),
  };
}

/**
 * The vCPU of a queue's unfinished `jobs` plus `notYetCached` jobs just created, at the queue's current shape. Kept
 * for callers not yet moved to {@link dispatchRoom}, which also counts the slots pods record and reads the
 * expectations itself.
 */
export function unfinishedVCPU(jobs: readonly BuildkiteJob[], notYetCached: number, current: InstanceShape): number {
  const cached = heldVCPU({ limits: { instanceShape: current, maxVCPU: 0 }, seats: jobs.map((j) => seatOf(j, undefined)), expectedJobs: [] });
  return cached + notYetCached * shapeResources(current).vcpu;
}

/** Whether the agent in the job's pod may already hold the job (after which Buildkite, not the stack, owns it). */
export const agentMayHaveStarted = (job: BuildkiteJob): boolean =>
  job.status?.startedAt !== undefined || job.status?.phase === "Running";

/**
 * Reservations to extend now: jobs no agent has acquired yet, last reserved more than a third of the expiry ago (or
 * never by this process, e.g. after a restart). A job counts as not acquired while its pod has not started, or while
 * Buildkite last reported it `reserved` (a running pod's agent may still be registering). Extending an already
 * accepted job is harmless (`not_reserved`).
 */
export function reservationsToExtend(jobs: readonly BuildkiteJob[], lastReservedMs: ReadonlyMap<string, number>, nowMs: number, expirySeconds: number,
  states: ReadonlyMap<string, JobState> = new Map()): string[] {
  const due = nowMs - (expirySeconds * 1000) / 3;
  return jobs
    .filter((j) => !isTerminal(j.status?.phase) && (!agentMayHaveStarted(j) || states.get(j.spec.uuid) === "reserved"))
    .filter((j) => (lastReservedMs.get(j.spec.uuid) ?? -Infinity) <= due)
    .map((j) => j.spec.uuid);
}

/** Buildkite states that mean the job is no longer the stack's to run (§3.2). `finished` is missing on purpose: it
 * may be the pod's own agent that finished it before the pod's status caught up. */
const TAKEN_BACK: ReadonlySet<JobState> = new Set<JobState>(["canceling", "canceled", "expired", "skipped", "broken", "timed_out"]);

/** Jobs to mark with the state Buildkite reports, for the job controller to act on (once per job and state). */
export function takenBack(jobs: readonly BuildkiteJob[], states: ReadonlyMap<string, JobState>): { name: string; state: JobState }[] {
  const marks: { name: string; state: JobState }[] = [];
  for (const job of jobs) {
    const state = states.get(job.spec.uuid);
    if (state === undefined || !TAKEN_BACK.has(state)) continue;
    if (job.metadata.annotations?.[ANNOTATIONS.buildkiteState] === state) continue;
    marks.push({ name: job.metadata.name ?? "", state });
  }
  return marks;
}

/** The BuildkiteJob for a reserved job: named after its uuid, owned by its queue (deleted with it). */
export function jobResourceFor(queue: BuildkiteQueue, job: ScheduledJob, stackKey: string, tokenSecret?: string): BuildkiteJob {
  return {
    apiVersion: "buildkite.com/v1alpha1",
    kind: "BuildkiteJob",
    metadata: {
      name: jobResourceName(job.id),
      namespace: queue.metadata.namespace ?? "",
      labels: { [LABELS.managedBy]: MANAGED_BY, [LABELS.queue]: queue.metadata.name ?? "", [LABELS.jobUuid]: job.id.toLowerCase() },
      annotations: { [ANNOTATIONS.stack]: stackKey, ...(tokenSecret !== undefined ? { [ANNOTATIONS.agentTokenSecret]: tokenSecret } : {}) },
      ownerReferences: [{
        apiVersion: queue.apiVersion, kind: queue.kind, name: queue.metadata.name ?? "", uid: queue.metadata.uid ?? "", controller: true, blockOwnerDeletion: false,
      }],
    },
    spec: {
      queueRef: { name: queue.metadata.name ?? "" },
      uuid: job.id,
      priority: job.priority,
      scheduledAt: job.scheduled_at,
      agentQueryRules: job.agent_query_rules,
      pipelineSlug: job.pipeline.slug,
      buildNumber: job.build.number,
      ...(job.build.branch !== null ? { branch: job.build.branch } : {}),
      ...(job.step.key !== null ? { stepKey: job.step.key } : {}),
    },
  };
}

/** How long after its end a job is still checked for having been left waiting in Buildkite. */
export const STRANDED_WINDOW_MS = 15 * 60_000;

/**
 * Jobs whose pod ended but whose Buildkite job is still `scheduled` or `reserved`: the agent never acquired it (a
 * token that expired, an agent that exited early). Marked so the job controller tells Buildkite with `finish`, instead
 * of leaving the job waiting behind a BuildkiteJob that will never run it. Canceled jobs and jobs already reported or
 * marked are skipped.
 */
export function stranded(jobs: readonly BuildkiteJob[], states: ReadonlyMap<string, JobState>): { name: string; state: JobState }[] {
  return jobs.flatMap((job) => {
    const state = states.get(job.spec.uuid);
    if ((state !== "scheduled" && state !== "reserved") || !isTerminal(job.status?.phase) || job.status?.phase === "Canceled") return [];
    if (job.metadata.annotations?.[ANNOTATIONS.buildkiteState] !== undefined) return [];
    if (job.status?.conditions?.some((c) => c.type === "ReportedToBuildkite") === true) return [];
    return [{ name: job.metadata.name ?? "", state }];
  });
}

/** Terminal jobs recent enough to check for {@link stranded}. */
export function recentlyEnded(jobs: readonly BuildkiteJob[], nowMs: number): BuildkiteJob[] {
  return jobs.filter((j) => isTerminal(j.status?.phase) && j.status?.phase !== "Canceled"
    && nowMs - (Date.parse(j.status?.finishedAt ?? "") || nowMs) < STRANDED_WINDOW_MS
    && j.metadata.annotations?.[ANNOTATIONS.buildkiteState] === undefined
    && j.status?.conditions?.some((c) => c.type === "ReportedToBuildkite") !== true);
}
