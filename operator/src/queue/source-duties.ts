import type { ConditionUpdate } from "../api/conditions.js";
import { BUILDKITE_JOB, type BuildkiteJob, type BuildkiteJobSpecStep } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { ANNOTATIONS } from "../api/keys.js";
import { jobResourceName, jobTokenSecretName } from "../api/names.js";
import { concurrency } from "../api/shapes.js";
import type { NotificationBatcher } from "../buildkite/notifier.js";
import type { StacksClient } from "../buildkite/stacks-client.js";
import type { JobState, ScheduledJob } from "../buildkite/types.js";
import { faultPoint } from "../fault-points.js";
import { isTerminal } from "../job/phase.js";
import type { ControllerContext } from "../kube/controller.js";
import { apiMessage, createRefusal, isAlreadyExists, isNotFound } from "../kube/field-manager.js";
import { annotate, deleteCustomObject } from "../kube/resources.js";
import { NotLeaderError } from "../kube/write-guard.js";
import {
  afterReserve,
  chooseReservations,
  dispatchRoom,
  jobResourceFor,
  recentlyEnded,
  reservationsToExtend,
  stranded,
  takenBack,
  type JobTokenChoice,
} from "./dispatch.js";
import type { JobTokens } from "./job-tokens.js";
import { dispatchError, eachLimited } from "./source-support.js";
import { stepOf } from "./step-source.js";

/** A queue's registered stack. */
export interface Connection {
  key: string;
  client: StacksClient;
  notifier: NotificationBatcher;
  /** The queue key Buildkite echoed at registration; listing uses it (§1.4 S1). */
  queueKey: string;
  fingerprint: string;
}

/** What the job source remembers between cycles; all of it can be rebuilt from Buildkite and the cluster. */
export class SourceMemory {
  /** When each job was last reserved by this process (for extensions). */
  readonly lastReservedMs = new Map<string, number>();
  /** Buildkite's states of the unfinished jobs at the last check. */
  lastStates: ReadonlyMap<string, JobState> = new Map();
  /**
   * Jobs a dispatch recorded and is reserving now: an extension must not reserve them first (jobs are reserved in
   * priority order, a whole batch at a time).
   */
  readonly reserving = new Set<string>();
  /** Timeline facts already sent per job uuid (jobs first seen after a restart start with what they show then). */
  readonly notified = new Map<string, Set<string>>();
}

/** One cycle's view of a queue, handed to each duty. */
export interface Scope {
  ctx: ControllerContext;
  queue: BuildkiteQueue;
  conn: Connection;
  /** The queue's BuildkiteJobs as the cache holds them. */
  jobs: readonly BuildkiteJob[];
  tokens: JobTokens;
  memory: SourceMemory;
  reservationExpirySeconds: number;
  setCondition(update: ConditionUpdate): void;
}

/** Kubernetes writes in flight at once per queue when a poll takes many jobs. */
const CREATE_CONCURRENCY = 16;
/** Jobs recorded, then reserved in one call, at a time: the next chunk is recorded while one is reserved. */
const RESERVE_CHUNK = 32;
/** `namespace/name` of a queue: its key among the expectations. */
export const queueKeyOf = (queue: BuildkiteQueue): string =>
  `${queue.metadata.namespace ?? ""}/${queue.metadata.name ?? ""}`;

/**
 * Takes jobs: lists scheduled jobs, chooses as many as there are free slots (highest priority first), records each as
 * a BuildkiteJob, and only then reserves them, so a crash at any point leaves a record the next cycle finishes (a
 * recorded job that is still scheduled is reserved again; one reserved elsewhere is deleted). Jobs reserved get their
 * job tokens; those whose pods use the cluster token are released to start. Resolves to whether Buildkite listed jobs
 * waiting for the queue (taken or not), which makes the next poll come sooner.
 */
export async function dispatch(s: Scope): Promise<boolean> {
  const { ctx, queue, conn, jobs, memory } = s;
  const listed = await conn.client.scheduledJobs(conn.key, conn.queueKey).catch((err: unknown) => {
    throw dispatchError(err, "list scheduled jobs");
  });
  const paused = queue.spec.paused ? "spec" : listed.paused ? "buildkite" : undefined;
  // A job just created takes room (through the expectations) until the cache shows it.
  const room = dispatchRoom(queue, ctx.caches, ctx.expectations, listed.jobs);
  const decision = chooseReservations({
    scheduled: listed.jobs,
    ...room,
    limits: queue.spec,
    paused: paused !== undefined,
  });
  s.setCondition(
    paused === undefined
      ? {
          type: "Dispatching",
          status: "True",
          reason: "Dispatching",
          message: `Taking up to ${concurrency(queue.spec)} jobs at once from Buildkite queue ${conn.queueKey}.`,
        }
      : {
          type: "Dispatching",
          status: "False",
          reason: paused === "spec" ? "PausedInSpec" : "PausedInBuildkite",
          message:
            paused === "spec"
              ? "spec.paused is true: no new jobs are taken; set it to false to resume."
              : `Queue ${conn.queueKey} is paused in Buildkite: no new jobs are taken until it is resumed there.`,
        },
  );
  // A job reserved and then not run hides from every other stack for the whole reservation: with job tokens
  // Required, nothing is taken until Buildkite is known to issue them.
  const mode = decision.take.length > 0 ? await s.tokens.modeFor(queue, conn, decision.take[0]?.id ?? "") : "none";
  const take = mode === "none" ? [] : decision.take;
  const choice = (uuid: string): JobTokenChoice =>
    mode === "job" ? { tokenSecret: jobTokenSecretName(uuid) } : { pending: true };
  const reclaimed = jobs.filter((j) => decision.reclaim.includes(j.spec.uuid));
  for (const job of take) memory.reserving.add(job.id);
  // Chunk by chunk, in the order the jobs should start: each chunk's records are created side by side (every job
  // taken has a free slot), then reserved in one call while the next chunk's records are made, so the first pods of a
  // burst start after one chunk's round trips, not after every job's.
  let reserving: Promise<void> | undefined;
  try {
    for (let i = 0; i === 0 || i < take.length; i += RESERVE_CHUNK) {
      const created = await recordJobs(s, take.slice(i, i + RESERVE_CHUNK), choice);
      if (reserving) await reserving;
      reserving = undefined;
      if (created.length > 0) faultPoint("after-create-jobs");
      const held = i === 0 ? reclaimed : [];
      if (created.length + held.length === 0) continue;
      reserving = reserveAndRelease(s, created, held);
      // Awaited by the next chunk or below; never an unhandled rejection meanwhile.
      reserving.catch(() => undefined);
    }
    if (reserving) await reserving;
  } finally {
    // A failure stops the chunks after it: their jobs stay scheduled, and records already made are reclaimed.
    if (reserving) await reserving.catch(() => undefined);
    for (const job of take) memory.reserving.delete(job.id);
  }
  return listed.jobs.length > 0 && paused === undefined;
}

/** Records `jobs` as BuildkiteJobs, side by side; returns those created, in the order given. */
async function recordJobs(
  s: Scope,
  jobs: readonly ScheduledJob[],
  choice: (uuid: string) => JobTokenChoice,
): Promise<BuildkiteJob[]> {
  const made = new Map<string, BuildkiteJob>();
  await eachLimited(jobs, CREATE_CONCURRENCY, async (job) => {
    const step = await readStep(s, job.id);
    if (step === undefined) return;
    const record = await createJob(s, jobResourceFor(s.queue, job, s.conn.key, choice(job.id), step));
    if (record) made.set(job.id, record);
  });
  return jobs.flatMap((job) => made.get(job.id) ?? []);
}

/**
 * What the job's step asks of its pod (get-job), before the job is recorded: the job controller decides with it. A
 * job Buildkite no longer offers (404) or cannot show now is left for a later poll, which lists it again if it waits.
 */
async function readStep(s: Scope, uuid: string): Promise<BuildkiteJobSpecStep | undefined> {
  try {
    return stepOf(await s.conn.client.getJob(s.conn.key, uuid));
  } catch (err) {
    s.ctx.logger.warn("Could not read a job's step from Buildkite; it is taken at a later poll", {
      job: uuid,
      error: (err as Error).message,
    });
    return undefined;
  }
}

/**
 * Reserves jobs that have a BuildkiteJob here: `fresh` ones created this cycle (deleted when Buildkite does not let
 * this stack have them: they were never ours) and `held` ones (reservations to take again or extend). Reserved jobs
 * get their job tokens, or lose the pending mark that keeps a cluster-token pod from starting.
 */
async function reserveAndRelease(
  s: Scope,
  fresh: readonly BuildkiteJob[],
  held: readonly BuildkiteJob[],
): Promise<void> {
  const { ctx, conn, memory } = s;
  const all = [...fresh, ...held];
  // Checked right before: a reservation is not a Kubernetes write, so the central guard does not see it.
  if (ctx.mayAct?.() === false)
    throw new NotLeaderError(
      "This replica may not act (it is not the leader, or its lease may have lapsed): no job is reserved in Buildkite.",
    );
  const result = await conn.client
    .reserve(
      conn.key,
      all.map((j) => j.spec.uuid),
      s.reservationExpirySeconds,
    )
    .catch((err: unknown) => {
      throw dispatchError(err, "reserve jobs");
    });
  faultPoint("after-reserve");
  for (const uuid of result.reserved) memory.lastReservedMs.set(uuid, ctx.clock.nowMs());
  const outcome = afterReserve(fresh, held, new Set(result.reserved));
  await eachLimited(outcome.discard, CREATE_CONCURRENCY, async (job) => {
    await discard(s, job);
  });
  await eachLimited(outcome.release, CREATE_CONCURRENCY, async (job) => {
    await annotate(ctx.clients, BUILDKITE_JOB, job.metadata.namespace ?? "", job.metadata.name ?? "", {
      [ANNOTATIONS.reservation]: null,
    }).catch(ignoreNotFound);
  });
  await issueTokens(s, outcome.issue);
}

/** Asks for the job tokens of `jobs` and writes them; a job Buildkite did not issue one for is asked for again later. */
async function issueTokens(s: Scope, jobs: readonly BuildkiteJob[]): Promise<void> {
  if (jobs.length === 0) return;
  const issued = await s.tokens.issue(
    s.queue,
    s.conn,
    jobs.map((j) => j.spec.uuid),
  );
  await eachLimited(jobs, CREATE_CONCURRENCY, async (job) => {
    await s.tokens.store(job, issued.get(job.spec.uuid));
  });
}

/** A job Buildkite did not let this stack reserve (another stack has it, or it is gone): its record goes. */
async function discard(s: Scope, job: BuildkiteJob): Promise<void> {
  const name = job.metadata.name ?? "";
  s.ctx.expectations.forget(`${job.metadata.namespace ?? ""}/${name}`);
  await deleteCustomObject(s.ctx.clients, BUILDKITE_JOB, job.metadata.namespace ?? "", name);
  s.ctx.logger.info("Deleted a job Buildkite did not let this stack reserve", {
    namespace: job.metadata.namespace,
    job: name,
  });
}

/** Creates the BuildkiteJob; returns it as created, or undefined when it already existed or was refused. */
async function createJob(s: Scope, body: BuildkiteJob): Promise<BuildkiteJob | undefined> {
  const { ctx, queue, conn } = s;
  const { group, version, plural } = BUILDKITE_JOB;
  const namespace = body.metadata.namespace ?? "";
  const name = body.metadata.name ?? "";
  try {
    const created = (await ctx.clients.custom.createNamespacedCustomObject({
      group,
      version,
      plural,
      namespace,
      body,
    })) as BuildkiteJob;
    ctx.expectations.created(queueKeyOf(queue), `${namespace}/${name}`);
    if (created.metadata.uid !== undefined) ctx.expectations.jobCreated(`${namespace}/${name}`, created.metadata.uid);
    s.memory.notified.set(body.spec.uuid, new Set());
    ctx.metrics.jobDispatched(`${namespace}/${queue.metadata.name ?? ""}`, queue.spec.instanceShape);
    conn.notifier.add(
      body.spec.uuid,
      `Reserved by Kubernetes queue ${namespace}/${queue.metadata.name ?? ""}; starting a ${queue.spec.instanceShape} pod.`,
    );
    ctx.logger.info("Took job from Buildkite", {
      namespace,
      queue: queue.metadata.name,
      job: name,
      priority: body.spec.priority,
    });
    return created;
  } catch (err) {
    // An earlier cycle whose answer was lost already made it: same job, same name; the next listing reclaims it.
    if (isAlreadyExists(err)) return undefined;
    if (createRefusal(err) === "refused") {
      // Not retried (admission or validation refused it): the job stays scheduled in Buildkite, for another stack or
      // until the cause is fixed. The operator's own missing RBAC verb is thrown and retried instead.
      const message = `Could not create BuildkiteJob ${name}: ${apiMessage(err)}`;
      ctx.recorder.record(queue, "Warning", "JobNotCreated", message);
      ctx.logger.warn(message, { namespace, queue: queue.metadata.name });
      return undefined;
    }
    throw err;
  }
}

/**
 * Keeps the reservations of jobs no agent has acquired yet (extended before they lapse, with fresh job tokens, as a
 * token dies with its reservation), confirms jobs still pending from before a crash, and asks again for tokens
 * Buildkite did not issue.
 */
export async function maintain(s: Scope): Promise<void> {
  const { ctx, conn, jobs, memory } = s;
  const ours = jobs.filter((j) => j.metadata.annotations?.[ANNOTATIONS.stack] === conn.key);
  const live = new Set(ours.filter((j) => !isTerminal(j.status?.phase)).map((j) => j.spec.uuid));
  for (const uuid of memory.lastReservedMs.keys()) if (!live.has(uuid)) memory.lastReservedMs.delete(uuid);
  const due = new Set(
    reservationsToExtend(
      ours,
      memory.lastReservedMs,
      ctx.clock.nowMs(),
      s.reservationExpirySeconds,
      memory.lastStates,
    ).filter((uuid) => !memory.reserving.has(uuid)),
  );
  if (due.size > 0)
    await reserveAndRelease(
      s,
      [],
      ours.filter((j) => due.has(j.spec.uuid)),
    );
  const young = (uuid: string): boolean =>
    ctx.expectations.has(queueKeyOf(s.queue), `${s.queue.metadata.namespace ?? ""}/${jobResourceName(uuid)}`);
  await issueTokens(
    s,
    s.tokens.awaiting(jobs, young).filter((j) => !due.has(j.spec.uuid)),
  );
}

/** Asks Buildkite for the state of every unfinished job and marks those it took back (canceled, expired, …). */
export async function checkStates(s: Scope): Promise<void> {
  const { ctx, conn, jobs } = s;
  const ours = jobs.filter((j) => j.metadata.annotations?.[ANNOTATIONS.stack] === conn.key);
  const unfinished = ours.filter((j) => !isTerminal(j.status?.phase));
  const ended = recentlyEnded(ours, ctx.clock.nowMs());
  if (unfinished.length === 0 && ended.length === 0) return;
  const states = await conn.client
    .getStates(
      conn.key,
      [...unfinished, ...ended].map((j) => j.spec.uuid),
    )
    .catch((err: unknown) => {
      throw dispatchError(err, "check job states");
    });
  s.memory.lastStates = states;
  for (const mark of [...takenBack(unfinished, states), ...stranded(ended, states)]) {
    const namespace = s.queue.metadata.namespace ?? "";
    ctx.expectations.jobChanged(`${namespace}/${mark.name}`);
    await annotate(ctx.clients, BUILDKITE_JOB, namespace, mark.name, {
      [ANNOTATIONS.buildkiteState]: mark.state,
    }).catch(ignoreNotFound);
    ctx.logger.info("Marked a job with its Buildkite state", { namespace, job: mark.name, state: mark.state });
  }
}

export function ignoreNotFound(err: unknown): void {
  if (!isNotFound(err)) throw err;
}
