import { iso, isoOrNull } from "./http.js";
import { LOG_SETTINGS, type JobEvent, type JobState } from "./model.js";
import type { AgentRecord, JobRecord, StackRecord } from "./records.js";

/**
 * The shapes the fake sends. Wire shapes follow Buildkite (§1.4, §2.6); the fake-only records returned by the
 * control API and the test helpers use the same snake_case spelling.
 */

/** A job as the control API and `FakeBuildkite.job()` report it: payload, outcome, log and history. */
export interface FakeJobRecord {
  readonly id: string;
  readonly state: JobState;
  readonly queue_key: string;
  readonly agent_query_rules: readonly string[];
  readonly priority: number;
  readonly command: string;
  readonly env: Readonly<Record<string, string>>;
  readonly created_at: string;
  readonly scheduled_at: string;
  readonly runnable_at: string;
  /** When a stack's list first showed the job; null if no list has. */
  readonly listed_at: string | null;
  readonly started_at: string | null;
  readonly finished_at: string | null;
  readonly pipeline: { readonly slug: string; readonly uuid: string };
  readonly build: { readonly uuid: string; readonly number: number; readonly branch: string };
  readonly step: { readonly key: string | null };
  readonly reservation: { readonly stack_key: string; readonly expires_at: string } | null;
  /** The agent that holds or held the job. */
  readonly agent_id: string | null;
  readonly exit_status: number | null;
  readonly signal: string | null;
  readonly signal_reason: string | null;
  readonly chunks_failed_count: number | null;
  /** The detail of a stack's finish, or why the fake finished the job (agent lost). */
  readonly finish_detail: string | null;
  /** The log assembled from the uploaded chunks by byte offset. */
  readonly log: string;
  readonly chunks: readonly { readonly sequence: number; readonly offset: number; readonly size: number }[];
  readonly notifications: readonly { readonly detail: string; readonly timestamp: string }[];
  readonly history: readonly {
    readonly from: JobState | null;
    readonly to: JobState;
    readonly event: JobEvent | "seed";
    readonly at: string;
  }[];
}

/**
 * Reassembles a job's log. Chunks arrive out of order and up to three at a time (§2.3 step 7), so each is placed
 * at its byte offset rather than appended in arrival order.
 */
export function assembleLog(job: JobRecord): string {
  let length = 0;
  for (const chunk of job.chunks.values()) length = Math.max(length, chunk.offset + chunk.data.length);
  const log = Buffer.alloc(length);
  for (const chunk of job.chunks.values()) chunk.data.copy(log, chunk.offset);
  return log.toString("utf8");
}

/** The fake-only view of a job. */
export function jobRecordView(job: JobRecord): FakeJobRecord {
  return {
    id: job.uuid,
    state: job.state,
    queue_key: job.queue_key,
    agent_query_rules: [...job.agent_query_rules],
    priority: job.priority,
    command: job.command,
    env: { ...job.env },
    created_at: iso(job.created_at),
    scheduled_at: iso(job.scheduled_at),
    runnable_at: iso(job.runnable_at),
    listed_at: isoOrNull(job.listed_at),
    started_at: isoOrNull(job.started_at),
    finished_at: isoOrNull(job.finished_at),
    pipeline: { ...job.pipeline },
    build: { ...job.build },
    step: { ...job.step },
    reservation: job.reservation
      ? { stack_key: job.reservation.stack_key, expires_at: iso(job.reservation.expires_at) }
      : null,
    agent_id: job.agent_uuid ?? null,
    exit_status: job.exit_status ?? null,
    signal: job.signal ?? null,
    signal_reason: job.signal_reason ?? null,
    chunks_failed_count: job.chunks_failed_count ?? null,
    finish_detail: job.finish_detail ?? null,
    log: assembleLog(job),
    chunks: [...job.chunks.values()]
      .sort((a, b) => a.sequence - b.sequence)
      .map((c) => ({ sequence: c.sequence, offset: c.offset, size: c.size })),
    notifications: job.notifications.map((n) => ({ detail: n.detail, timestamp: iso(n.timestamp) })),
    history: job.history.map((h) => ({ from: h.from, to: h.to, event: h.event, at: iso(h.at) })),
  };
}

/**
 * The agent API's Job object (§2.6), sent by acquire, accept and a dispatching ping. No `endpoint`: the agent must
 * keep talking to the fake.
 */
export function agentJobObject(job: JobRecord, token: string | undefined): Record<string, unknown> {
  return {
    id: job.uuid,
    state: job.state,
    env: job.env,
    step: {},
    ...LOG_SETTINGS,
    ...(token === undefined ? {} : { token }),
    runnable_at: iso(job.runnable_at),
    priority: job.priority,
  };
}

/** One item of `GET /v3/stacks/{key}/scheduled-jobs` (§1.4 S3); nested objects are always present. */
export function scheduledJobItem(job: JobRecord): Record<string, unknown> {
  return {
    id: job.uuid,
    priority: job.priority,
    agent_query_rules: job.agent_query_rules,
    scheduled_at: iso(job.scheduled_at),
    runnable_at: iso(job.runnable_at),
    pipeline: { slug: job.pipeline.slug, uuid: job.pipeline.uuid },
    build: { uuid: job.build.uuid, number: job.build.number, branch: job.build.branch },
    step: { key: job.step.key },
  };
}

/** A stack as register returns it (§1.4 S1). */
export interface FakeStackView {
  readonly id: string;
  readonly organization_uuid: string;
  readonly key: string;
  readonly type: string;
  /** Echoes the queue key the stack registered with; clients list with it. */
  readonly cluster_queue_key: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly last_connected_on: string;
  readonly state: "connected" | "disconnected" | "lost";
}

/** A stack as register returns it; `cluster_queue_key` echoes what the stack asked for. */
export function stackView(stack: StackRecord, organizationUuid: string): FakeStackView {
  return {
    id: stack.id,
    organization_uuid: organizationUuid,
    key: stack.key,
    type: stack.type,
    cluster_queue_key: stack.queue_key,
    metadata: { ...stack.metadata },
    last_connected_on: iso(stack.last_connected_on),
    state: stack.state,
  };
}

/** An agent as the control API reports it (no session token). */
export interface FakeAgentView {
  readonly id: string;
  readonly name: string;
  readonly tags: readonly string[];
  readonly queue_key: string;
  readonly connection_state: AgentRecord["connection_state"];
  readonly ignore_in_dispatches: boolean;
  readonly features: readonly string[];
  /** The job a JAT-registered agent is limited to. */
  readonly bound_job_id: string | null;
  /** The job the agent holds now. */
  readonly job_id: string | null;
  readonly paused: boolean;
  readonly stop_requested: boolean;
  readonly registered_at: string;
  readonly last_seen_at: string;
  readonly last_heartbeat_at: string | null;
}

/** The control API's view of an agent. */
export function agentView(agent: AgentRecord): FakeAgentView {
  return {
    id: agent.id,
    name: agent.name,
    tags: [...agent.tags],
    queue_key: agent.queue_key,
    connection_state: agent.connection_state,
    ignore_in_dispatches: agent.ignore_in_dispatches,
    features: [...agent.features],
    bound_job_id: agent.bound_job_uuid ?? null,
    job_id: agent.job_uuid ?? null,
    paused: agent.paused,
    stop_requested: agent.stop_requested,
    registered_at: iso(agent.registered_at),
    last_seen_at: iso(agent.last_seen_at),
    last_heartbeat_at: isoOrNull(agent.last_heartbeat_at),
  };
}
