import { randomBytes, randomUUID } from "node:crypto";
import { HttpError, type FakeRequest } from "./http.js";
import { DEFAULT_QUEUE_ALIASES, TERMINAL_STATES, transition, type JobEvent, type JobState } from "./model.js";
import type { AgentRecord, AgentTokenRecord, JatRecord, JobRecord, QueueRecord, StackRecord } from "./records.js";
import { seedJobRecord, type SeedJobOptions } from "./seed.js";

/** Who a request's token says it is; only valid (unrevoked, unexpired) tokens get a class other than `none`. */
export type Principal =
  | { readonly class: "agent"; readonly token: AgentTokenRecord }
  | { readonly class: "jat"; readonly jat: JatRecord }
  | { readonly class: "session"; readonly agent: AgentRecord }
  | { readonly class: "job"; readonly job: JobRecord }
  | { readonly class: "none"; readonly reason: string };

/** What an API route handler works with. */
export interface ApiContext {
  readonly store: FakeStore;
  readonly req: FakeRequest;
  readonly principal: Principal;
}

/** Options for {@link FakeStore}. */
export interface StoreOptions {
  /** Milliseconds since the epoch; reservations, JATs and agent liveness follow it, so tests can move time. */
  readonly clock: () => number;
  /** The default agent token's value. */
  readonly agentToken: string;
  /** An agent silent for this long is lost and its job finished with exit -1 (§3.3: Buildkite waits 3 min). */
  readonly agentLostAfterMs: number;
}

/** The cluster's default queue key; `_default`, `__default__`, `~` and `-` resolve to it. */
export const DEFAULT_QUEUE_KEY = "default";

/**
 * Everything the fake knows: organization, cluster, queues, tokens, stacks, agents and jobs, plus the primitives
 * that change them. Time-driven changes (reservation expiry, lost agents) happen in {@link sweep}, which the server
 * runs before every request and on a timer, so a test that moves the injected clock sees their effect next request.
 */
export class FakeStore {
  readonly organization = { slug: "fake-org", uuid: randomUUID() };
  readonly cluster = { uuid: randomUUID(), name: "fake-cluster" };
  readonly queues = new Map<string, QueueRecord>();
  readonly agentTokens = new Map<string, AgentTokenRecord>();
  readonly jats = new Map<string, JatRecord>();
  readonly stacks = new Map<string, StackRecord>();
  readonly agents = new Map<string, AgentRecord>();
  readonly jobs = new Map<string, JobRecord>();
  readonly #sessions = new Map<string, AgentRecord>();
  readonly #jobTokens = new Map<string, JobRecord>();
  /** Reserved jobs and live agents, so the sweep does not scan every job and agent ever seen on every request. */
  readonly #reserved = new Set<JobRecord>();
  readonly #live = new Set<AgentRecord>();
  #lastSweep = Number.NaN;
  readonly #options: StoreOptions;
  #jobSeq = 0;
  #agentSeq = 0;

  constructor(options: StoreOptions) {
    this.#options = options;
    this.queue(DEFAULT_QUEUE_KEY);
    this.createAgentToken(options.agentToken, "default agent token");
  }

  now(): number {
    return this.#options.clock();
  }

  /** A new opaque secret with Buildkite's prefix for its kind (`bkaa_`, `bkaj_`, `bkjat_`, `bkct_`). */
  static secret(prefix: string): string {
    return `${prefix}${randomBytes(20).toString("hex")}`;
  }

  /** The canonical key of a queue spelling: absent or a default alias means the default queue. */
  queueKey(raw: string | undefined): string {
    return raw === undefined || raw === "" || DEFAULT_QUEUE_ALIASES.has(raw) ? DEFAULT_QUEUE_KEY : raw;
  }

  /** The queue with this key, created on first use: the fake does not make tests declare queues up front. */
  queue(raw: string | undefined): QueueRecord {
    const key = this.queueKey(raw);
    let queue = this.queues.get(key);
    if (!queue) {
      queue = { id: randomUUID(), key, paused: false };
      this.queues.set(key, queue);
    }
    return queue;
  }

  /** The registered stack with this key, or 404. */
  stack(key: string): StackRecord {
    const stack = this.stacks.get(key);
    if (!stack) throw new HttpError(404, `No stack found with key ${key}; register it first`);
    return stack;
  }

  createAgentToken(value: string = FakeStore.secret("bkct_"), description = "agent token"): AgentTokenRecord {
    const existing = this.agentTokens.get(value);
    if (existing) {
      existing.revoked = false;
      return existing;
    }
    const token: AgentTokenRecord = { uuid: randomUUID(), value, description, revoked: false };
    this.agentTokens.set(value, token);
    return token;
  }

  revokeAgentToken(value: string): void {
    const token = this.agentTokens.get(value);
    if (!token) throw new HttpError(404, "no such agent token");
    token.revoked = true;
  }

  /** Classifies a token. Messages never repeat the token. */
  identify(value: string | undefined): Principal {
    if (value === undefined)
      return { class: "none", reason: "missing Authorization header (expected `Token <token>`)" };
    const token = this.agentTokens.get(value);
    if (token) return token.revoked ? { class: "none", reason: "agent token revoked" } : { class: "agent", token };
    const agent = this.#sessions.get(value);
    if (agent) {
      return agent.connection_state === "disconnected" || agent.connection_state === "lost"
        ? { class: "none", reason: "agent session ended" }
        : { class: "session", agent };
    }
    const job = this.#jobTokens.get(value);
    if (job)
      return job.job_token?.revoked === false ? { class: "job", job } : { class: "none", reason: "job token revoked" };
    const jat = this.jats.get(value);
    if (jat) {
      const problem = this.#jatProblem(jat);
      return problem ? { class: "none", reason: problem } : { class: "jat", jat };
    }
    return { class: "none", reason: "invalid token" };
  }

  #jatProblem(jat: JatRecord): string | undefined {
    if (jat.used) return "job acquisition token already used";
    if (jat.expires_at <= this.now()) return "job acquisition token expired";
    const job = this.jobs.get(jat.job_uuid);
    // A JAT dies with its reservation (§1.4 S9).
    if (job?.reservation?.stack_key !== jat.stack_key) return "job acquisition token's reservation has ended";
    return undefined;
  }

  /** Registers an agent and opens its session. */
  registerAgent(input: {
    name: string | undefined;
    tags: readonly string[];
    ignoreInDispatches: boolean;
    features: readonly string[];
    boundJob: string | undefined;
  }): AgentRecord {
    this.#agentSeq += 1;
    const queueTag = input.tags.find((t) => t.startsWith("queue="))?.slice("queue=".length);
    const agent: AgentRecord = {
      id: randomUUID(),
      name: input.name !== undefined && input.name !== "" ? input.name : `fake-agent-${this.#agentSeq}`,
      session_token: FakeStore.secret("bkaa_"),
      tags: input.tags,
      queue_key: this.queueKey(queueTag),
      ignore_in_dispatches: input.ignoreInDispatches,
      features: input.features,
      registered_at: this.now(),
      bound_job_uuid: input.boundJob,
      connection_state: "registered",
      last_seen_at: this.now(),
      last_heartbeat_at: undefined,
      paused: false,
      stop_requested: false,
      job_uuid: undefined,
    };
    this.agents.set(agent.id, agent);
    this.#sessions.set(agent.session_token, agent);
    this.#live.add(agent);
    return agent;
  }

  /** Ends an agent's session: it disconnected, or went silent and is lost. Its session token stops working. */
  endSession(agent: AgentRecord, how: "disconnected" | "lost"): void {
    agent.connection_state = how;
    this.#live.delete(agent);
  }

  /** Issues the job token an agent uses for everything about this job (§2.1). */
  issueJobToken(job: JobRecord): string {
    if (job.job_token) this.#jobTokens.delete(job.job_token.value);
    const value = FakeStore.secret("bkaj_");
    job.job_token = { value, revoked: false };
    this.#jobTokens.set(value, job);
    return value;
  }

  /** Adds a job (§6.6) and returns it. */
  seedJob(options: SeedJobOptions = {}): JobRecord {
    this.#jobSeq += 1;
    const queue = this.queue(options.queue_key);
    const job = seedJobRecord(options, {
      seq: this.#jobSeq,
      now: this.now(),
      queueKey: queue.key,
      organizationSlug: this.organization.slug,
    });
    if (this.jobs.has(job.uuid)) throw new HttpError(422, `job ${job.uuid} already exists`);
    this.jobs.set(job.uuid, job);
    return job;
  }

  /** The job with this uuid, or a 404. */
  job(uuid: string): JobRecord {
    const job = this.jobs.get(uuid);
    if (!job) throw new HttpError(404, `No job found with id ${uuid}`);
    return job;
  }

  /**
   * Moves a job through the state machine and records the step. Refusals become HTTP errors: 423 carries the job's
   * `Retry-After`. Leaving `reserved` drops the reservation; reaching a terminal state frees the agent.
   */
  apply(job: JobRecord, event: JobEvent, refusal?: string): JobRecord {
    const result = transition(job.state, event);
    if (!result.ok) {
      const message = refusal ?? `Job ${job.uuid} is ${job.state}; ${event.replace("_", " ")} is not allowed`;
      const headers: Record<string, string> =
        result.status === 423 ? { "Retry-After": String(job.retry_after_seconds) } : {};
      throw new HttpError(result.status, message, headers);
    }
    this.setState(job, result.to, event);
    return job;
  }

  /** Applies a state the machine already approved, keeping the derived indexes straight. */
  setState(job: JobRecord, to: JobState, event: JobEvent): void {
    job.history.push({ from: job.state, to, event, at: this.now() });
    job.state = to;
    if (to === "reserved") this.#reserved.add(job);
    else {
      this.#reserved.delete(job);
      job.reservation = undefined;
    }
    if (TERMINAL_STATES.has(to)) {
      job.finished_at ??= this.now();
      const agent = job.agent_uuid === undefined ? undefined : this.agents.get(job.agent_uuid);
      if (agent?.job_uuid === job.uuid) agent.job_uuid = undefined;
    }
  }

  /** Notes that an agent was heard from (heartbeat or any other call with its session or job token). */
  touch(principal: Principal): void {
    const agent =
      principal.class === "session"
        ? principal.agent
        : principal.class === "job" && principal.job.agent_uuid !== undefined
          ? this.agents.get(principal.job.agent_uuid)
          : undefined;
    if (agent) agent.last_seen_at = this.now();
  }

  /** Applies the passage of time: expired reservations and JATs, and agents that went silent (§6.4). */
  sweep(): void {
    const now = this.now();
    // Idempotent for a given instant: nothing created at `now` is already due, so a repeat would change nothing.
    if (now === this.#lastSweep) return;
    this.#lastSweep = now;
    for (const job of [...this.#reserved]) {
      if (job.reservation && job.reservation.expires_at <= now) this.apply(job, "reservation_expired");
    }
    // Used JATs stay until they expire, so a second registration with one is told why it fails.
    for (const [value, jat] of this.jats) if (jat.expires_at <= now) this.jats.delete(value);
    for (const agent of [...this.#live]) {
      if (now - agent.last_seen_at < this.#options.agentLostAfterMs) continue;
      this.endSession(agent, "lost");
      const job = agent.job_uuid === undefined ? undefined : this.jobs.get(agent.job_uuid);
      if (job && transition(job.state, "agent_lost").ok) {
        job.exit_status = -1;
        job.finish_detail = "agent lost";
        this.apply(job, "agent_lost");
      }
    }
  }
}
