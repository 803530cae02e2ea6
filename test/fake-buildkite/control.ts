import { HttpError } from "./http.js";
import type { Faults, FaultSpec } from "./faults.js";
import type { JobEvent, JobState } from "./model.js";
import type { RateLimiter } from "./rate-limit.js";
import type { AgentRecord } from "./records.js";
import type { RequestLog, RequestLogEntry } from "./request-log.js";
import type { SeedJobOptions } from "./seed.js";
import type { FakeStore } from "./store.js";
import {
  agentView,
  jobRecordView,
  stackView,
  type FakeAgentView,
  type FakeJobRecord,
  type FakeStackView,
} from "./views.js";

/** A queue as the control API reports it. */
export interface FakeQueueView {
  readonly id: string;
  readonly key: string;
  readonly paused: boolean;
}

/**
 * What a test can do to the fake (§6.6). The `/_fake/...` HTTP routes and the `FakeBuildkite` helpers both call
 * these methods, so an in-process test and an out-of-process client (the demo, a benchmark) drive the same logic.
 */
export class FakeControl {
  constructor(
    private readonly store: FakeStore,
    private readonly faults: Faults,
    private readonly log: RequestLog,
    private readonly limiter: RateLimiter,
  ) {}

  /** Adds a job, in state `scheduled` unless told otherwise. */
  seedJob(options: SeedJobOptions = {}): FakeJobRecord {
    return jobRecordView(this.store.seedJob(options));
  }

  job(uuid: string): FakeJobRecord {
    this.store.sweep();
    return jobRecordView(this.store.job(uuid));
  }

  /** A job's state alone: cheap enough to ask for thousands of jobs several times a second. */
  jobState(uuid: string): JobState {
    this.store.sweep();
    return this.store.job(uuid).state;
  }

  jobs(): FakeJobRecord[] {
    this.store.sweep();
    return [...this.store.jobs.values()].map(jobRecordView);
  }

  /** Cancels a job as a person in the UI would: at once before an agent has it, via `canceling` after (§3.3). */
  cancel(uuid: string): FakeJobRecord {
    return this.#event(uuid, "cancel");
  }

  /** Fires the step timeout of a running job (`timing_out`; the agent then finishes it as `timed_out`). */
  timeout(uuid: string): FakeJobRecord {
    return this.#event(uuid, "timeout");
  }

  /** Releases a locked (waiting, blocked, …) job to `scheduled`. */
  unlock(uuid: string): FakeJobRecord {
    return this.#event(uuid, "unlock");
  }

  /** Expires a job nobody picked up. */
  expire(uuid: string): FakeJobRecord {
    return this.#event(uuid, "expire");
  }

  #event(uuid: string, event: JobEvent): FakeJobRecord {
    this.store.sweep();
    return jobRecordView(this.store.apply(this.store.job(uuid), event));
  }

  /** Pauses dispatch on a queue (created if new); stacks see `paused`/`dispatch_paused` true. */
  pauseQueue(key: string): FakeQueueView {
    const queue = this.store.queue(key);
    queue.paused = true;
    return { ...queue };
  }

  resumeQueue(key: string): FakeQueueView {
    const queue = this.store.queue(key);
    queue.paused = false;
    return { ...queue };
  }

  queues(): FakeQueueView[] {
    return [...this.store.queues.values()].map((q) => ({ ...q }));
  }

  /** Creates (or un-revokes) an agent token and returns its value; a random `bkct_…` value if none is given. */
  createToken(options: { readonly token?: string; readonly description?: string } = {}): string {
    return this.store.createAgentToken(options.token, options.description).value;
  }

  /** Revokes an agent token: registration and Stacks calls with it get 401. */
  revokeToken(token: string): void {
    this.store.revokeAgentToken(token);
  }

  stacks(): FakeStackView[] {
    return [...this.store.stacks.values()].map((s) => stackView(s, this.store.organization.uuid));
  }

  agents(): FakeAgentView[] {
    this.store.sweep();
    return [...this.store.agents.values()].map(agentView);
  }

  /** Makes the agent's pings answer `pause` (true) or resume normal answers (false). */
  pauseAgent(uuid: string, paused = true): void {
    this.#agent(uuid).paused = paused;
  }

  /** Makes the agent's next ping answer `disconnect`. */
  stopAgent(uuid: string): void {
    this.#agent(uuid).stop_requested = true;
  }

  #agent(uuid: string): AgentRecord {
    const agent = this.store.agents.get(uuid);
    if (!agent) throw new HttpError(404, `No agent found with id ${uuid}`);
    return agent;
  }

  injectFault(spec: FaultSpec): void {
    this.faults.add(spec);
  }

  clearFaults(): void {
    this.faults.clear();
  }

  pendingFaults(): ReturnType<Faults["pending"]> {
    return this.faults.pending();
  }

  /** API requests seen so far, oldest first (control API calls are not logged). */
  requests(): RequestLogEntry[] {
    return this.log.entries();
  }

  clearRequests(): void {
    this.log.clear();
  }

  /** Turns Stacks API rate limiting (429 over the documented limits) on or off. */
  setRateLimits(enabled: boolean): void {
    this.limiter.enabled = enabled;
  }

  /** Applies the passage of time now (reservation and JAT expiry, lost agents), e.g. right after moving a test clock. */
  sweep(): void {
    this.store.sweep();
  }
}
