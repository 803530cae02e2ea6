import { createHash } from "node:crypto";
import { BUILDKITE_AGENT_ENDPOINT } from "../config/config.js";
import type { ConditionUpdate } from "../api/conditions.js";
import { BUILDKITE_JOB, type BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { ANNOTATIONS } from "../api/keys.js";
import { jobResourceName, jobTokenSecretName } from "../api/names.js";
import { concurrency } from "../api/shapes.js";
import { NotificationBatcher } from "../buildkite/notifier.js";
import type { QueueStack } from "../buildkite/stack-directory.js";
import { stackKey, StacksClient } from "../buildkite/stacks-client.js";
import type { RequestReport } from "../buildkite/transport.js";
import type { JobState } from "../buildkite/types.js";
import { isTerminal } from "../job/phase.js";
import type { Timer } from "../kube/clock.js";
import type { ControllerContext } from "../kube/controller.js";
import { apiMessage, isAlreadyExists, isForbidden, isInvalid, isNotFound } from "../kube/field-manager.js";
import { annotate, splitKey } from "../kube/resources.js";
import { chooseReservations, jobResourceFor, recentlyEnded, reservationsToExtend, stranded, takenBack, unfinishedVCPU } from "./dispatch.js";
import { JobTokens } from "./job-tokens.js";
import { dispatchError, eachLimited, errorText, readAgentToken, registrationError, SourceError } from "./source-support.js";

/** How the job sources talk to Buildkite; one set for the whole operator. */
export interface JobSourceSettings {
  /** Identifies this Kubernetes cluster in stack keys, so two clusters never share a stack. */
  clusterId: string;
  /** How often scheduled jobs are listed (default 1000 ms). */
  pollIntervalMs: number;
  /** How often jobs not yet started are checked for cancellation (default 5000 ms). */
  stateCheckIntervalMs: number;
  /** Reservation length asked of Buildkite; reservations are extended at a third of it (default 900 s). */
  reservationExpirySeconds: number;
  /** The longest wait between attempts after failures (default 30000 ms). */
  maxBackoffMs: number;
  /** With job tokens Required, how soon after a refusal Buildkite is asked again before anything is reserved (default 60000 ms). */
  jobTokenProbeMs: number;
  /** Attempts per Stacks API call (default 5). */
  maxAttempts?: number;
  onRequest?: (r: RequestReport) => void;
  /** The only agent API endpoints the queue's token may be sent to. */
  allowedEndpoints: readonly string[];
}

/** How often a connected source reads its token Secret again, to notice a rotated token. */
const TOKEN_RECHECK_MS = 30_000;
/** Kubernetes writes in flight at once per queue when a poll takes many jobs. */
const CREATE_CONCURRENCY = 16;

export const DEFAULT_JOB_SOURCE_SETTINGS: Omit<JobSourceSettings, "clusterId"> = {
  allowedEndpoints: [BUILDKITE_AGENT_ENDPOINT],
  pollIntervalMs: 1_000,
  stateCheckIntervalMs: 5_000,
  reservationExpirySeconds: 900,
  maxBackoffMs: 30_000,
  jobTokenProbeMs: 60_000,
};

interface Connection extends QueueStack {
  fingerprint: string;
  client: StacksClient;
  notifier: NotificationBatcher;
  /** The queue key Buildkite echoed at registration; listing uses it (§1.4 S1). */
  queueKey: string;
}

/** The Stacks API key of a queue's stack in this cluster. */
export const queueStackKey = (queue: BuildkiteQueue, settings: Pick<JobSourceSettings, "clusterId">): string =>
  stackKey({ clusterId: settings.clusterId, namespace: queue.metadata.namespace ?? "", queue: queue.metadata.name ?? "" });

/** A Stacks API client for a queue's endpoint and token, reporting its requests as the settings say. */
export function stacksClientFor(queue: BuildkiteQueue, token: string, ctx: Pick<ControllerContext, "clock" | "logger">,
  settings: Pick<JobSourceSettings, "maxAttempts" | "onRequest">): StacksClient {
  return new StacksClient({
    endpoint: queue.spec.endpoint, token, clock: ctx.clock, logger: ctx.logger,
    ...(settings.maxAttempts !== undefined ? { maxAttempts: settings.maxAttempts } : {}),
    ...(settings.onRequest ? { onRequest: settings.onRequest } : {}),
  });
}

/**
 * The job source of one BuildkiteQueue: registers its stack, lists scheduled jobs every poll, reserves only as many
 * as the queue has free slots (highest priority first), creates their BuildkiteJobs, extends reservations of jobs
 * whose pods have not started, and marks jobs Buildkite took back. Runs on its own timer with its own backoff, so
 * one queue's failures never hold up another's.
 */
export class QueueJobSource {
  private timer: Timer | undefined;
  private cycle: Promise<void> = Promise.resolve();
  private stopped = false;
  private connection: Connection | undefined;
  private failures = 0;
  private lastStateCheckMs = -Infinity;
  private readonly conds = new Map<string, ConditionUpdate>([
    ["Registered", { type: "Registered", status: "Unknown", reason: "Connecting", message: "Registering a stack with Buildkite." }],
    ["Dispatching", { type: "Dispatching", status: "Unknown", reason: "Connecting", message: "Not listing jobs until the stack is registered." }],
  ]);
  /** Job acquisition tokens: whether Buildkite issues them, and the jobs still waiting for theirs. */
  private readonly tokens: JobTokens;
  /** When each job was last reserved by this process (for extensions). */
  private readonly lastReservedMs = new Map<string, number>();
  /** When the token Secret was last read, for which queue settings. */
  private tokenCheck: { settings: string; atMs: number } | undefined;
  /** Buildkite's states of the unfinished jobs at the last check. */
  private lastStates: ReadonlyMap<string, JobState> = new Map();
  /** BuildkiteJobs created but maybe not in the cache yet, by name, with when: counted as taking a slot. */
  private readonly recentlyCreated = new Map<string, number>();

  constructor(
    readonly key: string,
    readonly uid: string,
    private readonly ctx: ControllerContext,
    private readonly settings: JobSourceSettings,
    /** Called when the queue's Buildkite conditions change, so its status is written. */
    private readonly onChange: (queueKey: string) => void,
  ) {
    this.tokens = new JobTokens(ctx, settings.jobTokenProbeMs, (update, queue) => { this.setCondition(update, queue); });
  }

  start(): void {
    this.schedule(0);
  }

  /** The registered stack, for reporting on this queue's jobs. */
  stack(): QueueStack | undefined {
    return this.connection;
  }

  conditions(): ConditionUpdate[] {
    return [...this.conds.values()];
  }

  /** Stops polling after the cycle in progress; `deregister` frees the stack in Buildkite (the queue was deleted). */
  async stop(deregister: boolean): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    await this.cycle;
    const conn = this.connection;
    this.connection = undefined;
    if (!conn) return;
    await conn.notifier.stop();
    if (!deregister) return;
    try {
      await conn.client.deregister(conn.key);
    } catch (err) {
      // Best effort: an unreachable Buildkite only leaves a disconnected stack behind.
      this.ctx.logger.warn("Could not deregister the Buildkite stack", { stack: conn.key, queue: this.key, error: errorText(err) });
    }
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = this.ctx.clock.setTimer(delayMs, () => {
      this.cycle = this.runCycle();
    });
  }

  private async runCycle(): Promise<void> {
    let delay = this.settings.pollIntervalMs;
    try {
      await this.once();
      this.failures = 0;
    } catch (err) {
      this.failures++;
      delay = Math.min(this.settings.maxBackoffMs, this.settings.pollIntervalMs * 2 ** Math.min(this.failures, 10));
      this.fail(err, delay);
    }
    this.schedule(delay);
  }

  private async once(): Promise<void> {
    const { namespace, name } = splitKey(this.key);
    const queue = this.ctx.caches.queues.get(name, namespace);
    if (!queue) return;
    const conn = await this.connect(queue);
    // A queue being deleted takes no new job; its stack stays registered so its jobs can still be reported on.
    if (queue.metadata.deletionTimestamp) return;
    const jobs = this.ctx.caches.jobs.list(namespace).filter((j) => j.spec.queueRef.name === name);
    await this.dispatch(queue, conn, jobs);
    await this.retryAwaitingTokens(queue, conn, jobs);
    await this.extend(queue, conn, jobs);
    if (this.ctx.clock.nowMs() - this.lastStateCheckMs >= this.settings.stateCheckIntervalMs) {
      this.lastStateCheckMs = this.ctx.clock.nowMs();
      await this.checkStates(conn, jobs);
    }
  }

  /** Reads the token, checks it and registers the stack, unless the token and endpoint are unchanged since. */
  private async connect(queue: BuildkiteQueue): Promise<Connection> {
    // The token Secret is read again only now and then (to pick up a rotated token), not on every poll.
    const settings = JSON.stringify([queue.spec.endpoint, queue.spec.queue, queue.spec.agentTokenSecretRef]);
    const now = this.ctx.clock.nowMs();
    if (this.connection && this.tokenCheck?.settings === settings && now - this.tokenCheck.atMs < TOKEN_RECHECK_MS) return this.connection;
    const token = await readAgentToken(this.ctx.clients, queue, this.settings.allowedEndpoints);
    this.tokenCheck = { settings, atMs: now };
    const fingerprint = createHash("sha256").update(JSON.stringify([queue.spec.endpoint, queue.spec.queue, token])).digest("hex");
    if (this.connection?.fingerprint === fingerprint) return this.connection;
    await this.connection?.notifier.stop();
    this.connection = undefined;
    const { logger, clock } = this.ctx;
    const client = stacksClientFor(queue, token, this.ctx, this.settings);
    const key = queueStackKey(queue, this.settings);
    const identity = await client.identity().catch((err: unknown) => { throw registrationError(err, queue); });
    if (!identity.cluster_uuid) {
      throw new SourceError("UnclusteredToken", `The token in Secret ${queue.spec.agentTokenSecretRef.name} is not a cluster agent token; the Stacks API needs one (bkct_…) from the cluster that holds queue ${queue.spec.queue}.`, "Registered");
    }
    const stack = await client.register(key, queue.spec.queue, {
      namespace: queue.metadata.namespace ?? "", queue: queue.metadata.name ?? "", shape: queue.spec.instanceShape,
    }).catch((err: unknown) => { throw registrationError(err, queue); });
    const notifier = new NotificationBatcher({ client, stackKey: key, clock, logger });
    this.connection = { fingerprint, client, notifier, key, queueKey: stack.cluster_queue_key };
    this.setCondition({
      type: "Registered", status: "True", reason: "Registered",
      message: `Registered as Buildkite stack ${key} for queue ${stack.cluster_queue_key} of cluster ${identity.cluster_name ?? identity.cluster_uuid}.`,
    }, queue);
    return this.connection;
  }

  /** Lists scheduled jobs and reserves as many as there are free slots, then creates their BuildkiteJobs. */
  private async dispatch(queue: BuildkiteQueue, conn: Connection, jobs: readonly BuildkiteJob[]): Promise<void> {
    const listed = await conn.client.scheduledJobs(conn.key, conn.queueKey).catch((err: unknown) => { throw dispatchError(err, "list scheduled jobs"); });
    const now = this.ctx.clock.nowMs();
    const names = new Set(jobs.map((j) => j.metadata.name ?? ""));
    for (const [name, at] of this.recentlyCreated) if (names.has(name) || now - at > 60_000) this.recentlyCreated.delete(name);
    const held = unfinishedVCPU(jobs, this.recentlyCreated.size, queue.spec.instanceShape);
    const paused = queue.spec.paused ? "spec" : listed.paused ? "buildkite" : undefined;
    const total = concurrency(queue.spec);
    const finished = new Set(jobs.filter((j) => isTerminal(j.status?.phase)).map((j) => j.metadata.name ?? ""));
    const decision = chooseReservations({
      scheduled: listed.jobs, existing: new Set([...names, ...this.recentlyCreated.keys()]), finished, unfinishedVCPU: held, limits: queue.spec, paused: paused !== undefined,
    });
    this.setCondition(paused === undefined
      ? { type: "Dispatching", status: "True", reason: "Dispatching", message: `Taking up to ${total} jobs at once from Buildkite queue ${conn.queueKey}.` }
      : { type: "Dispatching", status: "False", reason: paused === "spec" ? "PausedInSpec" : "PausedInBuildkite",
        message: paused === "spec" ? "spec.paused is true: no new jobs are taken; set it to false to resume." : `Queue ${conn.queueKey} is paused in Buildkite: no new jobs are taken until it is resumed there.` }, queue);
    // A job reserved and then not run hides from every other stack for the whole reservation: with job tokens
    // Required, nothing is reserved until Buildkite is known to issue them.
    const take = decision.take.length > 0 && await this.tokens.mayReserve(queue, conn, decision.take[0]?.id ?? "") ? decision.take : [];
    const uuids = [...take.map((j) => j.id), ...decision.reclaim];
    if (uuids.length === 0) return;
    const result = await conn.client.reserve(conn.key, uuids, this.settings.reservationExpirySeconds).catch((err: unknown) => { throw dispatchError(err, "reserve jobs"); });
    const reserved = new Set(result.reserved);
    for (const uuid of reserved) this.lastReservedMs.set(uuid, now);
    const taken = take.filter((j) => reserved.has(j.id));
    const reclaimed = jobs.filter((j) => decision.reclaim.includes(j.spec.uuid) && reserved.has(j.spec.uuid));
    const issued = await this.tokens.issue(queue, conn, [...taken.map((j) => j.id), ...reclaimed.map((j) => j.spec.uuid)]);
    // Every job taken has a free slot, so creating them side by side changes no order that matters; one by one, a
    // burst of hundreds would wait on as many round trips. A reserved job is always recorded as a BuildkiteJob (it
    // holds a slot and its reservation is extended): one whose token was not issued waits for it, never for the
    // cluster token unless the queue opted in.
    await eachLimited(taken, CREATE_CONCURRENCY, async (job) => {
      const created = await this.createJob(queue, conn, jobResourceFor(queue, job, conn.key, issued.agentToken ? undefined : jobTokenSecretName(job.id)));
      if (created && !issued.agentToken) await this.tokens.store(created, issued.tokens.get(job.id));
    });
    await eachLimited(reclaimed, CREATE_CONCURRENCY, async (job) => {
      if (job.metadata.annotations?.[ANNOTATIONS.agentTokenSecret] !== undefined) await this.tokens.store(job, issued.tokens.get(job.spec.uuid));
    });
  }

  /** Asks again for the tokens of reserved jobs that Buildkite did not issue one for (partial success, a refusal). */
  private async retryAwaitingTokens(queue: BuildkiteQueue, conn: Connection, jobs: readonly BuildkiteJob[]): Promise<void> {
    const waiting = this.tokens.awaiting(jobs, (uuid) => this.recentlyCreated.has(jobResourceName(uuid)));
    if (waiting.length === 0) return;
    const issued = await this.tokens.issue(queue, conn, waiting.map((j) => j.spec.uuid));
    if (issued.agentToken) return;
    await eachLimited(waiting, CREATE_CONCURRENCY, async (job) => { await this.tokens.store(job, issued.tokens.get(job.spec.uuid)); });
  }

  /** Creates the BuildkiteJob; returns it as created, or undefined when it already existed or was refused. */
  private async createJob(queue: BuildkiteQueue, conn: Connection, body: BuildkiteJob): Promise<BuildkiteJob | undefined> {
    const { group, version, plural } = BUILDKITE_JOB;
    const namespace = body.metadata.namespace ?? "";
    const name = body.metadata.name ?? "";
    try {
      const created = await this.ctx.clients.custom.createNamespacedCustomObject({ group, version, plural, namespace, body }) as BuildkiteJob;
      this.recentlyCreated.set(name, this.ctx.clock.nowMs());
      this.ctx.metrics.jobDispatched(this.key, queue.spec.instanceShape);
      conn.notifier.add(body.spec.uuid, `Reserved by Kubernetes queue ${namespace}/${queue.metadata.name ?? ""}; starting a ${queue.spec.instanceShape} pod.`);
      this.ctx.logger.info("Took job from Buildkite", { namespace, queue: queue.metadata.name, job: name, priority: body.spec.priority });
      return created;
    } catch (err) {
      // Another operator (or an earlier poll whose answer was lost) already made it: same job, same name.
      if (isAlreadyExists(err)) return undefined;
      if (isForbidden(err) || isInvalid(err)) {
        // Not retried: the reservation lapses and Buildkite offers the job again, by when the cause may be fixed.
        const message = `Could not create BuildkiteJob ${name}: ${apiMessage(err)}`;
        this.ctx.recorder.record(queue, "Warning", "JobNotCreated", message);
        this.ctx.logger.warn(message, { namespace, queue: queue.metadata.name });
        return undefined;
      }
      throw err;
    }
  }

  /** Extends the reservations of jobs whose pods have not started before they lapse. */
  private async extend(queue: BuildkiteQueue | undefined, conn: Connection, jobs: readonly BuildkiteJob[]): Promise<void> {
    const ours = jobs.filter((j) => j.metadata.annotations?.[ANNOTATIONS.stack] === conn.key);
    const live = new Set(ours.filter((j) => !isTerminal(j.status?.phase)).map((j) => j.spec.uuid));
    for (const uuid of this.lastReservedMs.keys()) if (!live.has(uuid)) this.lastReservedMs.delete(uuid);
    const due = reservationsToExtend(ours, this.lastReservedMs, this.ctx.clock.nowMs(), this.settings.reservationExpirySeconds, this.lastStates);
    if (due.length === 0) return;
    const result = await conn.client.reserve(conn.key, due, this.settings.reservationExpirySeconds).catch((err: unknown) => { throw dispatchError(err, "extend reservations"); });
    for (const uuid of due) this.lastReservedMs.set(uuid, this.ctx.clock.nowMs());
    // A job token dies with the reservation it was issued under: pods still waiting to start get a fresh one.
    const reserved = new Set(result.reserved);
    const waiting = ours.filter((j) => reserved.has(j.spec.uuid) && j.metadata.annotations?.[ANNOTATIONS.agentTokenSecret] !== undefined);
    if (waiting.length === 0 || !queue) return;
    const issued = await this.tokens.issue(queue, conn, waiting.map((j) => j.spec.uuid));
    if (issued.agentToken) return;
    await eachLimited(waiting, CREATE_CONCURRENCY, async (job) => { await this.tokens.store(job, issued.tokens.get(job.spec.uuid)); });
  }

  /** Asks Buildkite for the state of every unfinished job and marks those it took back (canceled, expired, …). */
  private async checkStates(conn: Connection, jobs: readonly BuildkiteJob[]): Promise<void> {
    const ours = jobs.filter((j) => j.metadata.annotations?.[ANNOTATIONS.stack] === conn.key);
    const unfinished = ours.filter((j) => !isTerminal(j.status?.phase));
    const ended = recentlyEnded(ours, this.ctx.clock.nowMs());
    if (unfinished.length === 0 && ended.length === 0) return;
    const states = await conn.client.getStates(conn.key, [...unfinished, ...ended].map((j) => j.spec.uuid)).catch((err: unknown) => { throw dispatchError(err, "check job states"); });
    this.lastStates = states;
    for (const mark of [...takenBack(unfinished, states), ...stranded(ended, states)]) {
      const namespace = splitKey(this.key).namespace;
      await annotate(this.ctx.clients, BUILDKITE_JOB, namespace, mark.name, { [ANNOTATIONS.buildkiteState]: mark.state })
        .catch((err: unknown) => { if (!isNotFound(err)) throw err; });
      this.ctx.logger.info("Marked a job with its Buildkite state", { namespace, job: mark.name, state: mark.state });
    }
  }

  private fail(err: unknown, retryInMs: number): void {
    const { namespace, name } = splitKey(this.key);
    const queue = this.ctx.caches.queues.get(name, namespace);
    const retry = ` Retrying in ${Math.round(retryInMs / 1000)} s.`;
    if (err instanceof SourceError) {
      if (err.phase === "Registered") {
        this.connection = undefined;
        this.setCondition({ type: "Registered", status: "False", reason: err.reason, message: err.message + retry }, queue);
        this.setCondition({ type: "Dispatching", status: "False", reason: "NotRegistered", message: "No jobs are taken until the stack is registered." }, queue);
      } else {
        this.setCondition({ type: "Dispatching", status: "False", reason: err.reason, message: err.message + retry }, queue);
      }
      if (err.reason === "AgentTokenRejected") this.connection = undefined;
      return;
    }
    this.ctx.logger.warn("Job source failed", { namespace, queue: name, error: errorText(err) });
    this.setCondition({ type: "Dispatching", status: "False", reason: "Error", message: errorText(err) + retry }, queue);
  }

  /** Updates one condition; a change of status or reason is an Event and a status write. */
  private setCondition(update: ConditionUpdate, queue: BuildkiteQueue | undefined): void {
    const current = this.conds.get(update.type);
    if (current?.status === update.status && current.reason === update.reason && current.message === update.message) return;
    this.conds.set(update.type, update);
    if (queue && (current?.status !== update.status || current.reason !== update.reason)) {
      this.ctx.recorder.record(queue, update.status === "False" ? "Warning" : "Normal", update.reason, update.message);
    }
    this.onChange(this.key);
  }
}
