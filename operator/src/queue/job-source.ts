import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { BuildkiteApiError } from "../buildkite/errors.js";
import { backoffDelayMs } from "../kube/backoff.js";
import type { Timer } from "../kube/clock.js";
import type { ControllerContext } from "../kube/controller.js";
import { splitKey } from "../kube/resources.js";
import type { AgentTokenReader } from "./agent-token.js";
import { DutySchedule, nextPollMs } from "./duty-schedule.js";
import { JobTokens } from "./job-tokens.js";
import { checkStates, dispatch, maintain, SourceMemory, type Connection, type Scope } from "./source-duties.js";
import { noteJob, notifyTimeline, report } from "./reporting.js";
import { errorText, SourceError } from "./source-support.js";
import { fingerprintOf, queueStackKey, register, stacksClientFor, type JobSourceSettings } from "./stack-connection.js";

export { DEFAULT_JOB_SOURCE_SETTINGS, type JobSourceSettings } from "./stack-connection.js";

/**
 * The duties of a job source, each running, failing and backing off on its own: a list that fails (or hangs in its
 * retries) never holds up extensions, state checks or reports.
 */
export type DutyName = "dispatch" | "maintain" | "states" | "report";

/**
 * The duties a cycle may start. Taking a job (dispatch) and marking jobs Buildkite took back or never handed to an
 * agent (states) act on what the cache does not hold (no BuildkiteJob yet, a free slot, no report yet): never on a
 * cache that may be stale. A queue being deleted takes no new job; its stack stays registered so its jobs can still
 * be extended, checked and reported on. Pure.
 */
export function dutiesToRun(state: { staleCache: boolean; deleting: boolean }): DutyName[] {
  if (state.staleCache) return ["maintain", "report"];
  return state.deleting ? ["maintain", "states", "report"] : ["dispatch", "maintain", "states", "report"];
}

/**
 * The one owner of everything Buildkite for one BuildkiteQueue: the connection and registration of its stack,
 * dispatch (list, record, reserve, job tokens), reservation extensions, state checks and cancellation, `finish` for
 * jobs that could not run, and timeline notifications. It talks to the job controller only through the BuildkiteJob:
 * it creates it, and writes annotations (`buildkite-state`, `reservation`, `reported`) that the job controller acts
 * on; it reads the job's spec and status. Runs on its own timer, so one queue's failures never hold up another's.
 */
export class QueueJobSource {
  private timer: Timer | undefined;
  private cycle: Promise<void> = Promise.resolve();
  private stopped = false;
  private connection: Connection | undefined;
  private connectFailures = 0;
  /** When the timeline notes of every job were last swept (see {@link once}). */
  private sweptMs = -Infinity;
  /** Whether the last list showed jobs waiting: the next poll then comes sooner. */
  private jobsWaiting = false;
  private readonly duties: DutySchedule<DutyName>;
  /** Duties in flight: a duty starts again only once its previous run is over. */
  private readonly running = new Map<DutyName, Promise<void>>();
  private readonly conds = new Map<string, ConditionUpdate>([
    [
      "Registered",
      { type: "Registered", status: "Unknown", reason: "Connecting", message: "Registering a stack with Buildkite." },
    ],
    [
      "Dispatching",
      {
        type: "Dispatching",
        status: "Unknown",
        reason: "Connecting",
        message: "Not listing jobs until the stack is registered.",
      },
    ],
  ]);
  private readonly tokens: JobTokens;
  private readonly memory = new SourceMemory();

  constructor(
    readonly key: string,
    readonly uid: string,
    private readonly ctx: ControllerContext,
    private readonly agentTokens: AgentTokenReader,
    private readonly settings: JobSourceSettings,
    /** Called when the queue's Buildkite conditions change, so its status is written. */
    private readonly onChange: (queueKey: string) => void,
  ) {
    this.tokens = new JobTokens(ctx, settings.jobTokenProbeMs, (update, queue) => {
      this.setCondition(update, queue);
    });
    this.duties = new DutySchedule(ctx.clock, settings.pollIntervalMs, settings.maxBackoffMs);
  }

  start(): void {
    this.schedule(0);
  }

  /** A BuildkiteJob of this queue changed in the cache: its timeline notes go out now, not at the next poll. */
  jobChanged(job: BuildkiteJob): void {
    const conn = this.connection;
    if (!conn || this.ctx.mayAct?.() === false) return;
    const { namespace, name } = splitKey(this.key);
    noteJob(conn, this.memory, this.ctx.caches.queues.get(name, namespace), job);
  }

  /** Whether the stack is registered now. */
  connected(): boolean {
    return this.connection !== undefined;
  }

  conditions(): ConditionUpdate[] {
    return [...this.conds.values()];
  }

  /**
   * Stops after the cycle in progress, sending the notifications already queued; `deregister` also frees the stack in
   * Buildkite, best effort (the queue is gone without its finalizer, or was made anew under the same name).
   */
  async stop(deregister = false): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    await this.cycle;
    await Promise.all(this.running.values());
    const conn = this.connection;
    this.connection = undefined;
    await conn?.notifier.stop();
    if (!conn || !deregister) return;
    await conn.client.deregister(conn.key).catch((err: unknown) => {
      // An unreachable Buildkite only leaves a disconnected stack behind.
      this.ctx.logger.warn("Could not deregister the Buildkite stack", {
        stack: conn.key,
        queue: this.key,
        error: errorText(err),
      });
    });
  }

  /**
   * Stops for good and deregisters the queue's stack (the queue is being deleted), with the token read now, so it
   * also happens when the operator was down at the time of the delete. Resolves to why the stack could not be
   * deregistered, or undefined when it was (or never existed); throws when Buildkite may answer later.
   */
  async release(queue: BuildkiteQueue): Promise<string | undefined> {
    await this.stop();
    let token: string;
    try {
      token = await this.agentTokens.token(queue);
    } catch (err) {
      if (err instanceof SourceError) return err.message;
      throw err;
    }
    const client = stacksClientFor(queue, token, this.ctx, { ...this.settings, maxAttempts: 2 });
    const stack = queueStackKey(queue, this.settings);
    try {
      await client.deregister(stack);
    } catch (err) {
      // Never registered, or already deregistered: nothing is left behind.
      if (err instanceof BuildkiteApiError && err.status === 404) return undefined;
      if (err instanceof BuildkiteApiError && !err.retryable)
        return `Buildkite refused to deregister stack ${stack}: ${err.message}`;
      throw err;
    }
    return undefined;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = this.ctx.clock.setTimer(delayMs, () => {
      this.cycle = this.runCycle();
    });
  }

  private async runCycle(): Promise<void> {
    let delay: number;
    try {
      await this.once();
      this.connectFailures = 0;
      delay = nextPollMs(this.jobsWaiting, this.settings.pollIntervalMs);
    } catch (err) {
      // Only a failure to connect lands here; each duty handles its own.
      this.connectFailures++;
      delay = backoffDelayMs(this.connectFailures, this.settings.pollIntervalMs, this.settings.maxBackoffMs);
      this.fail(err, delay);
    }
    this.schedule(delay);
  }

  private async once(): Promise<void> {
    // A replica that may not act (a standby, or a leader woken past its lease) asks Buildkite nothing.
    if (this.ctx.mayAct?.() === false) return;
    const { namespace, name } = splitKey(this.key);
    const queue = this.ctx.caches.queues.get(name, namespace);
    if (!queue || queue.metadata.uid !== this.uid) return;
    const conn = await this.connect(queue);
    const scope: Scope = {
      ctx: this.ctx,
      queue,
      conn,
      tokens: this.tokens,
      memory: this.memory,
      reservationExpirySeconds: this.settings.reservationExpirySeconds,
      jobs: this.ctx.caches.jobs.list(namespace).filter((j) => j.spec.queueRef.name === name),
      setCondition: (update) => {
        this.setCondition(update, queue);
      },
    };
    const stale = this.ctx.cacheProblem?.();
    if (stale !== undefined) {
      this.setCondition(
        {
          type: "Dispatching",
          status: "False",
          reason: "CacheNotReady",
          message: `No jobs are taken while the operator's view of the cluster may be out of date: ${stale}.`,
        },
        queue,
      );
    }
    const run: Record<DutyName, () => Promise<void>> = {
      dispatch: async () => {
        this.jobsWaiting = false;
        this.jobsWaiting = await dispatch(scope);
      },
      maintain: () => maintain(scope),
      states: () => checkStates(scope),
      report: () => report(scope),
    };
    for (const name of dutiesToRun({
      staleCache: stale !== undefined,
      deleting: queue.metadata.deletionTimestamp !== undefined,
    })) {
      this.duty(name, queue, run[name], name === "states" ? this.settings.stateCheckIntervalMs : 0);
    }
    // Each job's notes go out as it changes (jobChanged); this sweep only catches what that missed (no connection
    // then), so it runs with the state checks, not on every poll: at thousands of jobs a poll's sweep cost more than
    // the poll.
    const nowMs = this.ctx.clock.nowMs();
    if (nowMs - this.sweptMs >= this.settings.stateCheckIntervalMs) {
      this.sweptMs = nowMs;
      notifyTimeline(scope);
    }
  }

  /**
   * Starts one duty when it is due (`everyMs` after its last run, or its backoff after failures) and its previous
   * run is over; the cycle does not wait for it.
   */
  private duty(name: DutyName, queue: BuildkiteQueue, run: () => Promise<void>, everyMs = 0): void {
    if (this.running.has(name) || !this.duties.due(name)) return;
    const done = run()
      .then(
        () => {
          this.duties.succeeded(name, everyMs);
        },
        (err: unknown) => {
          this.fail(err, this.duties.failed(name), name === "dispatch" ? "Dispatching" : undefined, queue);
        },
      )
      .finally(() => {
        this.running.delete(name);
      });
    this.running.set(name, done);
  }

  /** Reads the token and registers the stack, unless the token and endpoint are unchanged since. */
  private async connect(queue: BuildkiteQueue): Promise<Connection> {
    const token = await this.agentTokens.token(queue);
    const current = this.connection;
    if (current?.fingerprint === fingerprintOf(queue, token)) return current;
    this.connection = undefined;
    await current?.notifier.stop();
    const registered = await register(queue, token, this.ctx, this.settings);
    this.connection = registered.connection;
    this.setCondition(registered.condition, queue);
    return registered.connection;
  }

  /** Records a failure on the queue's conditions; a failure of the stack itself drops the connection to register again. */
  private fail(err: unknown, retryInMs: number, condition?: "Dispatching", queue?: BuildkiteQueue): void {
    const { namespace, name } = splitKey(this.key);
    const current = queue ?? this.ctx.caches.queues.get(name, namespace);
    const retry = ` Retrying in ${Math.round(retryInMs / 1000)} s.`;
    if (err instanceof SourceError && err.phase === "Registered") {
      // Notes already queued still go out (to the stack as it was); the next cycle registers again.
      void this.connection?.notifier.stop();
      this.connection = undefined;
      this.setCondition(
        { type: "Registered", status: "False", reason: err.reason, message: err.message + retry },
        current,
      );
      this.setCondition(
        {
          type: "Dispatching",
          status: "False",
          reason: "NotRegistered",
          message: "No jobs are taken until the stack is registered.",
        },
        current,
      );
      return;
    }
    this.ctx.logger.warn("Job source failed", { namespace, queue: name, error: errorText(err) });
    if (condition === undefined) return;
    const reason = err instanceof SourceError ? err.reason : "Error";
    this.setCondition({ type: "Dispatching", status: "False", reason, message: errorText(err) + retry }, current);
  }

  /** Updates one condition; a change of status or reason is an Event and a status write. */
  private setCondition(update: ConditionUpdate, queue: BuildkiteQueue | undefined): void {
    const current = this.conds.get(update.type);
    if (current?.status === update.status && current.reason === update.reason && current.message === update.message)
      return;
    this.conds.set(update.type, update);
    if (queue && (current?.status !== update.status || current.reason !== update.reason)) {
      this.ctx.recorder.record(queue, update.status === "False" ? "Warning" : "Normal", update.reason, update.message);
    }
    this.onChange(this.key);
  }
}
