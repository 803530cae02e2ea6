/**
 * The fake Buildkite's vocabulary: job states, the events that move a job between them, and the state machine as a
 * pure function (reference `buildkite-api.md` §3 and §6.5). Everything the fake exposes uses Buildkite's wire
 * spelling (snake_case), so a test reads the same field names in a helper's result and in an HTTP body.
 */

/** Every job state Buildkite reports (§3.1); `reserved` exists only for the Stacks API. */
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

/** A Buildkite job state. */
export type JobState = (typeof JOB_STATES)[number];

/** States after which nothing more happens to a job. */
export const TERMINAL_STATES: ReadonlySet<JobState> = new Set<JobState>([
  "finished",
  "canceled",
  "timed_out",
  "expired",
  "skipped",
  "broken",
  "waiting_failed",
  "blocked_failed",
  "unblocked_failed",
]);

/**
 * States of a job that exists but may not run yet (dependencies, block steps, concurrency limits). An agent that
 * acquires such a job gets 423 Locked and retries after `Retry-After` (§2.5).
 */
export const LOCKED_STATES: ReadonlySet<JobState> = new Set<JobState>([
  "pending",
  "waiting",
  "blocked",
  "unblocked",
  "limiting",
  "limited",
  "platform_limiting",
  "platform_limited",
]);

/** Something that happens to a job, named by what causes it. */
export type JobEvent =
  | "reserve" // a stack's batch-reserve
  | "reservation_expired" // the reservation's expiry passed without an acquire
  | "stack_finish" // a stack's POST …/jobs/{id}/finish
  | "acquire" // an agent's PUT jobs/{id}/acquire
  | "dispatch" // a ping hands the job to a polling agent
  | "accept" // the agent accepts a dispatched job
  | "start" // the agent's PUT jobs/{id}/start
  | "cancel" // a person cancels the job (test control)
  | "timeout" // the step timeout fires (test control)
  | "agent_finish" // the agent's PUT jobs/{id}/finish
  | "expire" // nobody picked the job up in time (test control)
  | "agent_lost" // the agent stopped heartbeating
  | "unlock"; // dependencies met (test control)

/** The outcome of an event: the new state, or the HTTP status that refuses it. */
export type Transition =
  { readonly ok: true; readonly to: JobState } | { readonly ok: false; readonly status: 422 | 423 };

const to = (state: JobState): Transition => ({ ok: true, to: state });
const refuse: Transition = { ok: false, status: 422 };

/**
 * The job state machine of §6.5. Pure: the caller applies the new state and records it. Checks that depend on more
 * than the state (which stack holds a reservation, which agent owns the job) are the caller's.
 */
export function transition(from: JobState, event: JobEvent): Transition {
  switch (event) {
    case "reserve":
      return from === "scheduled" || from === "reserved" ? to("reserved") : refuse;
    case "reservation_expired":
      return from === "reserved" ? to("scheduled") : refuse;
    case "stack_finish":
      // Meant for jobs the stack cannot run; once an agent has the job, the agent owns its outcome.
      return from === "scheduled" || from === "reserved" ? to("finished") : refuse;
    case "acquire":
      if (from === "scheduled" || from === "reserved") return to("accepted");
      // 423 tells the agent to wait and retry; 422 tells it never to retry (exit 27).
      return LOCKED_STATES.has(from) ? { ok: false, status: 423 } : refuse;
    case "dispatch":
      return from === "scheduled" ? to("assigned") : refuse;
    case "accept":
      return from === "assigned" ? to("accepted") : refuse;
    case "start":
      if (from === "accepted") return to("running");
      // The agent calls start unconditionally after acquire; a job cancelled in between stays canceling so that
      // the agent's first state poll sees it and finishes the job as canceled.
      return from === "canceling" ? to("canceling") : refuse;
    case "cancel":
      if (from === "scheduled" || from === "reserved" || from === "assigned" || LOCKED_STATES.has(from))
        return to("canceled");
      // An agent has the job: it learns of the cancellation by polling and finishes the job itself.
      return from === "accepted" || from === "running" ? to("canceling") : refuse;
    case "timeout":
      return from === "running" ? to("timing_out") : refuse;
    case "agent_finish":
    case "agent_lost":
      return finishFrom(from);
    case "expire":
      return from === "scheduled" || from === "reserved" ? to("expired") : refuse;
    case "unlock":
      return LOCKED_STATES.has(from) ? to("scheduled") : refuse;
  }
}

function finishFrom(from: JobState): Transition {
  switch (from) {
    case "accepted": // never ran (exit -1)
    case "running":
      return to("finished");
    case "canceling":
      return to("canceled");
    case "timing_out":
      return to("timed_out");
    default:
      return refuse;
  }
}

/** How a request authenticated, by the kind of token it carried (never the token itself). */
export type TokenClass = "agent" | "jat" | "session" | "job" | "none";

/** The intervals the fake's register response sets; every one must be ≥ 1 or the agent panics on a zero ticker. */
export const AGENT_INTERVALS = { ping_interval: 1, job_status_interval: 1, heartbeat_interval: 5 } as const;

/** Log streaming settings of the Job object; `chunks_max_size_bytes` must be > 0 or the job never finishes. */
export const LOG_SETTINGS = {
  chunks_max_size_bytes: 102_400,
  chunks_interval_seconds: 1,
  log_max_size_bytes: 1_073_741_824,
} as const;

/** Stacks API limits (§1.4, §6.3). */
export const LIMITS = {
  maxStacks: 30,
  maxBatch: 1000,
  maxListLimit: 1000,
  defaultListLimit: 100,
  defaultReservationSeconds: 900,
  maxReservationSeconds: 3600,
  defaultJatSeconds: 900,
  maxJatSeconds: 3600,
  maxFinishDetailBytes: 4096,
  maxNotificationDetail: 256,
  maxNotificationsPerJob: 100,
  notificationGraceAfterFinishMs: 300_000,
} as const;

/** The spellings of "the cluster's default queue" that clients use (§1.4: docs, stacksapi and agent-stack-k8s). */
export const DEFAULT_QUEUE_ALIASES: ReadonlySet<string> = new Set(["_default", "__default__", "~", "-"]);
