import {
  HttpError,
  iso,
  isRecord,
  json,
  jsonObject,
  optionalInt,
  param,
  stringArray,
  type Params,
  type Reply,
  type Route,
} from "./http.js";
import { LIMITS, TERMINAL_STATES } from "./model.js";
import { FakeStore, type ApiContext } from "./store.js";

/**
 * Stacks API calls about individual jobs the stack holds (§1.4 S7–S9): failing a job it cannot run, posting
 * timeline notifications, and issuing job acquisition tokens for the agents it starts.
 */

/** Tolerated clock skew between a stack and the fake when checking that a notification is not in the future. */
const FUTURE_SKEW_MS = 1000;

function finish(ctx: ApiContext, params: Params): Reply {
  ctx.store.stack(param(params, "key"));
  const body = jsonObject(ctx.req);
  const detail = body.detail;
  if (typeof detail !== "string" || detail === "") throw new HttpError(422, "detail is required");
  if (Buffer.byteLength(detail) > LIMITS.maxFinishDetailBytes) {
    throw new HttpError(422, `detail may be at most ${LIMITS.maxFinishDetailBytes} bytes`);
  }
  // The Go client omits exit_status 0 (omitempty), so absent means the documented default -1 (§1.4 S7).
  const exitStatus = optionalInt(body, "exit_status") ?? -1;
  const { store } = ctx;
  const job = store.job(param(params, "uuid"));
  store.apply(
    job,
    "stack_finish",
    TERMINAL_STATES.has(job.state)
      ? `Job ${job.uuid} has already finished`
      : `Job ${job.uuid} is ${job.state}; only scheduled or reserved jobs can be finished by a stack`,
  );
  job.exit_status = exitStatus;
  job.signal_reason = "stack_error";
  job.finish_detail = detail;
  return json(200, {});
}

/** Why one notification is refused, or undefined if it is accepted (§1.4 S8 limits). */
function notificationProblem(store: FakeStore, item: unknown): string | undefined {
  if (!isRecord(item) || typeof item.job_uuid !== "string") return "job_uuid is required";
  const job = store.jobs.get(item.job_uuid);
  if (!job) return "job not found";
  const detail = item.detail;
  if (typeof detail !== "string" || detail === "") return "detail must not be empty";
  if (detail.length > LIMITS.maxNotificationDetail)
    return `detail may be at most ${LIMITS.maxNotificationDetail} characters`;
  const now = store.now();
  const stamp =
    item.timestamp === undefined || item.timestamp === null
      ? now
      : typeof item.timestamp === "string"
        ? Date.parse(item.timestamp)
        : Number.NaN;
  if (Number.isNaN(stamp)) return "timestamp must be an RFC 3339 time";
  if (stamp > now + FUTURE_SKEW_MS) return "timestamp must not be in the future";
  if (stamp < job.created_at) return "timestamp must not be before the job was created";
  if (job.finished_at !== undefined && now - job.finished_at > LIMITS.notificationGraceAfterFinishMs) {
    return "job finished more than 300 seconds ago";
  }
  if (job.notifications.length >= LIMITS.maxNotificationsPerJob) {
    return `job already has ${LIMITS.maxNotificationsPerJob} notifications`;
  }
  job.notifications.push({ detail, timestamp: stamp });
  return undefined;
}

function notifications(ctx: ApiContext, params: Params): Reply {
  ctx.store.stack(param(params, "key"));
  const items = jsonObject(ctx.req).notifications;
  if (!Array.isArray(items)) throw new HttpError(400, "notifications must be an array");
  if (items.length > LIMITS.maxBatch)
    throw new HttpError(400, `notifications may hold at most ${LIMITS.maxBatch} items`);
  // Partial success: valid items are kept, refusals are reported grouped by reason with their indexes.
  const byReason = new Map<string, number[]>();
  items.forEach((item: unknown, index) => {
    const problem = notificationProblem(ctx.store, item);
    if (problem !== undefined) byReason.set(problem, [...(byReason.get(problem) ?? []), index]);
  });
  return json(200, { errors: [...byReason].map(([error, indexes]) => ({ error, indexes })) });
}

function jobAcquisitionTokens(ctx: ApiContext, params: Params): Reply {
  const stack = ctx.store.stack(param(params, "key"));
  const body = jsonObject(ctx.req);
  const uuids = stringArray(body, "job_uuids", LIMITS.maxBatch);
  const lifetime = optionalInt(body, "token_lifetime_seconds") ?? LIMITS.defaultJatSeconds;
  if (lifetime < 1 || lifetime > LIMITS.maxJatSeconds) {
    throw new HttpError(422, `token_lifetime_seconds must be from 1 to ${LIMITS.maxJatSeconds}`);
  }
  const { store } = ctx;
  const stackQueue = store.queueKey(stack.queue_key);
  for (const uuid of uuids) {
    const job = store.jobs.get(uuid);
    if (job && job.queue_key !== stackQueue)
      throw new HttpError(403, "job does not belong to the registered stack queue");
  }
  const issued: { job_uuid: string; job_acquisition_token: string; expires_at: string }[] = [];
  const notIssued: string[] = [];
  for (const uuid of uuids) {
    const job = store.jobs.get(uuid);
    const reservation = job?.state === "reserved" ? job.reservation : undefined;
    if (reservation?.stack_key !== stack.key) {
      notIssued.push(uuid);
      continue;
    }
    // A JAT never outlives the reservation it was issued under.
    const expiresAt = Math.min(store.now() + lifetime * 1000, reservation.expires_at);
    const value = FakeStore.secret("bkjat_");
    store.jats.set(value, { value, job_uuid: uuid, stack_key: stack.key, expires_at: expiresAt, used: false });
    issued.push({ job_uuid: uuid, job_acquisition_token: value, expires_at: iso(expiresAt) });
  }
  return json(201, { job_acquisition_tokens: issued, not_issued: notIssued });
}

/** Stacks routes that act on one job the stack holds. */
export const stackJobRoutes: readonly Route<ApiContext>[] = [
  {
    name: "stacks.finish",
    method: "POST",
    pattern: "/v3/stacks/:key/jobs/:uuid/finish",
    auth: ["agent"],
    handle: finish,
  },
  {
    name: "stacks.notifications",
    method: "POST",
    pattern: "/v3/stacks/:key/notifications",
    auth: ["agent"],
    handle: notifications,
  },
  {
    name: "stacks.job-acquisition-tokens",
    method: "POST",
    pattern: "/v3/stacks/:key/job-acquisition-tokens",
    auth: ["agent"],
    handle: jobAcquisitionTokens,
  },
];
