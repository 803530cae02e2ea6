/**
 * Wire types of the Buildkite Stacks API (reference §1.4–1.5), spelled as the server sends them (snake_case), so a
 * reader can hold them against the docs. Each response type declares only the fields the operator reads, and
 * decode.ts checks every one of them; the server sends more. Nested objects are always present but their fields may
 * be null (§1.4 S3).
 */

/**
 * Rate-limit scope of each endpoint, as Buildkite names it in `RateLimit-Scope` (§1.4). Used as the `endpoint`
 * label of errors and metrics. Buildkite names no scope for register and token, and calls deregister's scope
 * `default`; those three are named after the call instead, so a metric label says what was called.
 */
export type EndpointScope =
  | "token"
  | "register"
  | "deregister"
  | "list-scheduled-jobs"
  | "batch-reserve"
  | "show-job"
  | "batch-load-job-states"
  | "finish-job"
  | "stack-notification"
  | "job-acquisition-tokens";

/** Every job state Buildkite documents (§3.1); `reserved` exists only for Stacks API clients. */
export const JOB_STATES = [
  "pending",
  "waiting",
  "waiting_failed",
  "blocked",
  "blocked_failed",
  "unblocked",
  "unblocked_failed",
  "limiting",
  "limited",
  "platform_limiting",
  "platform_limited",
  "scheduled",
  "reserved",
  "assigned",
  "accepted",
  "running",
  "finished",
  "canceling",
  "canceled",
  "timing_out",
  "timed_out",
  "expired",
  "skipped",
  "broken",
] as const;

/** A Buildkite job state as the Stacks API reports it (`finished`, never REST's `passed`/`failed`). */
export type JobState = (typeof JOB_STATES)[number];

const JOB_STATE_SET: ReadonlySet<string> = new Set(JOB_STATES);

/** Whether a string from the wire is a job state this client knows. */
export function isJobState(value: unknown): value is JobState {
  return typeof value === "string" && JOB_STATE_SET.has(value);
}

/** `GET /v3/token`: who the agent token belongs to. An empty or null `cluster_uuid` means an unclustered token. */
export interface TokenIdentity {
  uuid: string;
  cluster_uuid: string | null;
  cluster_name: string | null;
}

/** A registered stack (S1). `cluster_queue_key` is the queue the server bound it to; list jobs with it. */
export interface Stack {
  key: string;
  cluster_queue_key: string;
}

/** One job waiting in a queue (S3). Timestamps are RFC 3339 strings. */
export interface ScheduledJob {
  id: string;
  /** Higher runs first. */
  priority: number;
  /** `key=value` tags the job asks of an agent, e.g. `queue=linux`. */
  agent_query_rules: string[];
  scheduled_at: string;
  pipeline: { slug: string };
  build: { number: number; branch: string | null };
  step: { key: string | null };
}

/** One page of `GET /v3/stacks/{key}/scheduled-jobs` (S3), oldest job first. */
export interface ScheduledJobsPage {
  jobs: ScheduledJob[];
  page_info: { has_next_page: boolean; end_cursor: string | null };
  /**
   * The docs call the pause flag `dispatch_paused`, while the Go client reads `paused`; servers may send either or
   * both (§1.4), so a reader must treat either as paused. An absent flag reads as null.
   */
  cluster_queue: { paused: boolean | null; dispatch_paused: boolean | null };
}

/** `PUT …/scheduled-jobs/batch-reserve` (S4). The call succeeds even when nothing was reserved. */
export interface BatchReserveResponse {
  reserved: string[];
  not_reserved: string[];
}

/** `GET …/jobs/{uuid}` (S5). `env` plus `command` can exceed 100 KB. */
export interface JobDetails {
  id: string;
  env: Record<string, string>;
  command: string;
}

/** `POST …/jobs/get-states` (S6). Unknown uuids may be left out. */
export interface JobStatesResponse {
  states: Record<string, string>;
}

/** A timeline notification for one job (S8). */
export interface StackNotification {
  job_uuid: string;
  detail: string;
  timestamp?: string;
}

/** `POST …/notifications` (S8): partial success, with the indexes of the refused items per reason. */
export interface NotificationsResponse {
  errors: { error: string; indexes: number[] }[];
}

export interface JobAcquisitionTokensResponse {
  job_acquisition_tokens: { job_uuid: string; job_acquisition_token: string; expires_at: string }[];
  not_issued: string[];
}
