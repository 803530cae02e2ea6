import { controllerRef } from "../kube/resources.js";
import type { BuildkiteJob, BuildkiteJobSpecStep } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { ANNOTATIONS, LABELS, MANAGED_BY } from "../api/keys.js";
import { jobResourceName } from "../api/names.js";
import type { JobState, ScheduledJob } from "../buildkite/types.js";
import { freeSlots, heldVCPU, queueCapacity, type SlotLimits } from "../capacity/queue-capacity.js";
import { isTerminal } from "../job/phase.js";
import { needsReport, neverAcquired, reportOf, RESERVATION_PENDING } from "../job/plan.js";
import { timelineMessageFor } from "../aws/credentials-policy.js";
import { serviceAccountName } from "../api/names.js";
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
export function dispatchRoom(
  queue: BuildkiteQueue,
  caches: Pick<Caches, "jobs" | "live" | "pods">,
  expectations: Expectations,
  listed: readonly ScheduledJob[],
): DispatchRoom {
  const capacity = queueCapacity(queue, caches, expectations);
  const namespace = queue.metadata.namespace ?? "";
  // The capacity holds only live jobs; a listed job's record may also be one that ended and lost its pod.
  const recorded = listed.flatMap((l) => caches.jobs.get(jobResourceName(l.id), namespace) ?? []);
  const jobs = [...capacity.seats.map((s) => s.job), ...recorded];
  return {
    existing: new Set([...jobs.map((j) => j.metadata.name ?? ""), ...capacity.expectedJobs]),
    finished: new Set(jobs.filter((j) => isTerminal(j.status?.phase)).map((j) => j.metadata.name ?? "")),
    unfinishedVCPU: heldVCPU(capacity),
  };
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
export function reservationsToExtend(
  jobs: readonly BuildkiteJob[],
  lastReservedMs: ReadonlyMap<string, number>,
  nowMs: number,
  expirySeconds: number,
  states: ReadonlyMap<string, JobState> = new Map(),
): string[] {
  const due = nowMs - (expirySeconds * 1000) / 3;
  return jobs
    .filter((j) => !isTerminal(j.status?.phase) && (!agentMayHaveStarted(j) || states.get(j.spec.uuid) === "reserved"))
    .filter((j) => (lastReservedMs.get(j.spec.uuid) ?? -Infinity) <= due)
    .map((j) => j.spec.uuid);
}

/** Buildkite states that mean the job is no longer the stack's to run (§3.2). `finished` is missing on purpose: it
 * may be the pod's own agent that finished it before the pod's status caught up. */
const TAKEN_BACK: ReadonlySet<JobState> = new Set<JobState>([
  "canceling",
  "canceled",
  "expired",
  "skipped",
  "broken",
  "timed_out",
]);

/** Jobs to mark with the state Buildkite reports, for the job controller to act on (once per job and state). */
export function takenBack(
  jobs: readonly BuildkiteJob[],
  states: ReadonlyMap<string, JobState>,
): { name: string; state: JobState }[] {
  const marks: { name: string; state: JobState }[] = [];
  for (const job of jobs) {
    const state = states.get(job.spec.uuid);
    if (state === undefined || !TAKEN_BACK.has(state)) continue;
    if (job.metadata.annotations?.[ANNOTATIONS.buildkiteState] === state) continue;
    marks.push({ name: job.metadata.name ?? "", state });
  }
  return marks;
}

/** How a new BuildkiteJob's pod gets its token, decided before the job is reserved. */
export interface JobTokenChoice {
  /** The Secret that will hold the job's own acquisition token (written once Buildkite issues it). */
  tokenSecret?: string;
  /** Its pod will use the cluster agent token: no pod until the reservation is confirmed (see RESERVATION_PENDING). */
  pending?: boolean;
}

/**
 * The BuildkiteJob for a job about to be reserved: named after its uuid, owned by its queue (deleted with it). It is
 * created before the reservation, so a crash in between leaves a record of the job, never a job reserved and
 * forgotten; a job Buildkite then does not let this stack reserve is deleted again.
 */
export function jobResourceFor(
  queue: BuildkiteQueue,
  job: ScheduledJob,
  stackKey: string,
  tokens: JobTokenChoice = {},
  step?: BuildkiteJobSpecStep,
): BuildkiteJob {
  return {
    apiVersion: "buildkite.com/v1alpha1",
    kind: "BuildkiteJob",
    metadata: {
      name: jobResourceName(job.id),
      namespace: queue.metadata.namespace ?? "",
      labels: {
        [LABELS.managedBy]: MANAGED_BY,
        [LABELS.queue]: queue.metadata.name ?? "",
        [LABELS.jobUuid]: job.id.toLowerCase(),
      },
      annotations: {
        [ANNOTATIONS.stack]: stackKey,
        ...(tokens.tokenSecret !== undefined ? { [ANNOTATIONS.agentTokenSecret]: tokens.tokenSecret } : {}),
        ...(tokens.pending === true ? { [ANNOTATIONS.reservation]: RESERVATION_PENDING } : {}),
      },
      ownerReferences: [controllerRef(queue, false)],
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
      ...(step !== undefined && Object.keys(step).length > 0 ? { step } : {}),
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
export function stranded(
  jobs: readonly BuildkiteJob[],
  states: ReadonlyMap<string, JobState>,
): { name: string; state: JobState }[] {
  return jobs.flatMap((job) => {
    const state = states.get(job.spec.uuid);
    if (
      (state !== "scheduled" && state !== "reserved") ||
      !isTerminal(job.status?.phase) ||
      job.status?.phase === "Canceled"
    )
      return [];
    if (job.metadata.annotations?.[ANNOTATIONS.buildkiteState] !== undefined) return [];
    if (job.status?.conditions?.some((c) => c.type === "ReportedToBuildkite") === true) return [];
    return [{ name: job.metadata.name ?? "", state }];
  });
}

/** Terminal jobs recent enough to check for {@link stranded}. */
export function recentlyEnded(jobs: readonly BuildkiteJob[], nowMs: number): BuildkiteJob[] {
  return jobs.filter(
    (j) =>
      isTerminal(j.status?.phase) &&
      j.status?.phase !== "Canceled" &&
      nowMs - (Date.parse(j.status?.finishedAt ?? "") || nowMs) < STRANDED_WINDOW_MS &&
      j.metadata.annotations?.[ANNOTATIONS.buildkiteState] === undefined &&
      j.status?.conditions?.some((c) => c.type === "ReportedToBuildkite") !== true,
  );
}

/** Jobs this stack must still tell Buildkite could not run, and has not yet (see {@link needsReport}). */
export function reportsDue(jobs: readonly BuildkiteJob[], stackKey: string): BuildkiteJob[] {
  return jobs.filter(
    (j) => j.metadata.annotations?.[ANNOTATIONS.stack] === stackKey && needsReport(j) && reportOf(j) === undefined,
  );
}

/** The detail sent with `finish`: why the job could not run, and where to look. */
export function finishDetail(job: BuildkiteJob): string {
  const status = job.status ?? {};
  const where = `BuildkiteJob ${job.metadata.namespace ?? ""}/${job.metadata.name ?? ""}`;
  return neverAcquired(job)
    ? `The job's pod ended (${status.reason ?? "unknown"}: ${status.message ?? ""}) before its agent acquired the job, so it was not run; check the pod's agent token and logs (${where}).`
    : `${status.message ?? "The job could not run."} (${where}, reason ${status.reason ?? "unknown"})`;
}

/** One line for a job's Buildkite timeline, with the fact it reports (each is sent once per job). */
export interface TimelineNote {
  fact: "waiting" | "pod" | "credentials" | "node";
  text: string;
}

/**
 * The timeline notes a job's state calls for, at the moments a person waits on: a free slot, the pod created (and,
 * while the queue's AWS role is broken, that its credentials will not work), the pod placed on a node. Pure.
 */
export function timelineNotes(job: BuildkiteJob, queue: BuildkiteQueue | undefined): TimelineNote[] {
  const status = job.status ?? {};
  const namespace = job.metadata.namespace ?? "";
  const notes: TimelineNote[] = [];
  if (status.reason === "WaitingForSlot")
    notes.push({ fact: "waiting", text: status.message ?? "Waiting for a free slot." });
  if (status.podUID !== undefined) {
    notes.push({
      fact: "pod",
      text: `Created pod ${status.podName ?? ""} (${status.shape ?? ""}) in namespace ${namespace}.`,
    });
    // Silent permission failures are the worst kind: a job whose role is broken says so where people look.
    const credentials = queue?.status?.conditions?.find((c) => c.type === "CredentialsReady");
    const broken =
      queue && credentials
        ? timelineMessageFor(credentials, {
            namespace,
            name: queue.metadata.name ?? "",
            serviceAccount: serviceAccountName(queue),
            roleArn: queue.spec.aws?.roleArn ?? "",
          })
        : undefined;
    if (broken !== undefined) notes.push({ fact: "credentials", text: broken });
  }
  if (status.nodeName !== undefined) notes.push({ fact: "node", text: `Pod placed on node ${status.nodeName}.` });
  return notes;
}

/** What to do with the jobs of one reserve call, once Buildkite answered which it reserved. */
export interface ReserveOutcome {
  /** Records of jobs Buildkite did not let this stack have that were never confirmed here: deleted, never run. */
  discard: BuildkiteJob[];
  /** Jobs whose cluster-token pods were held back for the reservation: it is confirmed, they may start. */
  release: BuildkiteJob[];
  /** Reserved jobs whose pods use their own job token: a token is issued (a new one after each extension). */
  issue: BuildkiteJob[];
}

/**
 * Sorts the jobs of a reserve call: `fresh` ones recorded this cycle and `held` ones recorded before (taken again or
 * extended). A job not reserved is discarded only if it was never confirmed (fresh, or still pending): a held job
 * that is not reserved any more may be running under its agent already. Pure.
 */
export function afterReserve(
  fresh: readonly BuildkiteJob[],
  held: readonly BuildkiteJob[],
  reserved: ReadonlySet<string>,
): ReserveOutcome {
  const pending = (j: BuildkiteJob): boolean => j.metadata.annotations?.[ANNOTATIONS.reservation] !== undefined;
  const all = [...fresh, ...held];
  const ours = all.filter((j) => reserved.has(j.spec.uuid));
  return {
    discard: all.filter((j) => !reserved.has(j.spec.uuid) && (fresh.includes(j) || pending(j))),
    release: ours.filter(pending),
    issue: ours.filter((j) => j.metadata.annotations?.[ANNOTATIONS.agentTokenSecret] !== undefined),
  };
}
