import type { JobEvent, JobState } from "./model.js";

/**
 * The fake's mutable records (§6.1). Times are milliseconds from the injected clock; views turn them into RFC 3339
 * strings. Tokens live only here: no view, log or error message carries a token value.
 */

/** A cluster queue. */
export interface QueueRecord {
  readonly id: string;
  readonly key: string;
  paused: boolean;
}

/** A cluster agent token (`bkct_…`), usable for agent registration and the Stacks API. */
export interface AgentTokenRecord {
  readonly uuid: string;
  readonly value: string;
  readonly description: string;
  revoked: boolean;
}

/** A job acquisition token (`bkjat_…`): registers one agent, once, for one reserved job. */
export interface JatRecord {
  readonly value: string;
  readonly job_uuid: string;
  readonly stack_key: string;
  readonly expires_at: number;
  used: boolean;
}

/** A registered stack (an operator instance serving one queue). */
export interface StackRecord {
  readonly id: string;
  readonly key: string;
  type: string;
  queue_key: string;
  metadata: Record<string, string>;
  state: "connected" | "disconnected" | "lost";
  last_connected_on: number;
}

/** A registered agent and its session. */
export interface AgentRecord {
  readonly id: string;
  readonly name: string;
  readonly session_token: string;
  readonly tags: readonly string[];
  readonly queue_key: string;
  readonly ignore_in_dispatches: boolean;
  readonly features: readonly string[];
  readonly registered_at: number;
  /** Set when the agent registered with a JAT: the only job it may acquire. */
  readonly bound_job_uuid: string | undefined;
  connection_state: "registered" | "connected" | "disconnected" | "lost";
  last_seen_at: number;
  last_heartbeat_at: number | undefined;
  paused: boolean;
  stop_requested: boolean;
  /** The job this agent holds (acquired, accepted or dispatched), if any. */
  job_uuid: string | undefined;
}

/** One uploaded log chunk, decompressed. */
export interface ChunkRecord {
  readonly sequence: number;
  readonly offset: number;
  readonly size: number;
  readonly data: Buffer;
}

/** A state change, kept so tests can assert on the path a job took, not just where it ended. */
export interface TransitionRecord {
  readonly from: JobState | null;
  readonly to: JobState;
  readonly event: JobEvent | "seed";
  readonly at: number;
}

/** A job: identity, payload and lifecycle (§6.1). */
export interface JobRecord {
  readonly uuid: string;
  /** Insertion order, breaks `scheduled_at` ties so listing order and cursors are total. */
  readonly seq: number;
  readonly queue_key: string;
  readonly agent_query_rules: readonly string[];
  readonly priority: number;
  readonly created_at: number;
  readonly scheduled_at: number;
  readonly runnable_at: number;
  /** When a stack's list of scheduled jobs first showed the job (benchmarks trace a job's way from here). */
  listed_at?: number;
  readonly pipeline: { readonly slug: string; readonly uuid: string };
  readonly build: { readonly uuid: string; readonly number: number; readonly branch: string };
  readonly step: { readonly key: string | null };
  readonly command: string;
  env: Record<string, string>;
  state: JobState;
  /** Seconds sent in `Retry-After` when an agent acquires the job while it is locked. */
  readonly retry_after_seconds: number;
  reservation: { stack_key: string; expires_at: number } | undefined;
  job_token: { value: string; revoked: boolean } | undefined;
  agent_uuid: string | undefined;
  started_at: number | undefined;
  finished_at: number | undefined;
  exit_status: number | undefined;
  signal: string | undefined;
  signal_reason: string | undefined;
  chunks_failed_count: number | undefined;
  finish_detail: string | undefined;
  readonly chunks: Map<number, ChunkRecord>;
  readonly notifications: { detail: string; timestamp: number }[];
  readonly history: TransitionRecord[];
}
