import type {
  BatchReserveResponse, JobAcquisitionTokensResponse, JobDetails, JobStatesResponse, NotificationsResponse, ScheduledJobsPage, Stack, TokenIdentity,
} from "./types.js";

/**
 * Shallow shape checks for Stacks API responses. They check what the client reads, so a wrong body fails at the
 * boundary as a retryable `BuildkiteApiError` instead of as a TypeError deep in a controller. Each returns undefined
 * for a body of the wrong shape.
 */

type Json = Record<string, unknown>;

function isRecord(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === "string");
}

export function decodeIdentity(body: unknown): TokenIdentity | undefined {
  return isRecord(body) && typeof body.uuid === "string" ? body as unknown as TokenIdentity : undefined;
}

export function decodeStack(body: unknown): Stack | undefined {
  return isRecord(body) && typeof body.key === "string" && typeof body.cluster_queue_key === "string"
    ? body as unknown as Stack : undefined;
}

export function decodeScheduledJobsPage(body: unknown): ScheduledJobsPage | undefined {
  if (!isRecord(body) || !isRecord(body.page_info) || !isRecord(body.cluster_queue) || !Array.isArray(body.jobs)) return undefined;
  const jobsOk = body.jobs.every((j) => isRecord(j) && typeof j.id === "string" && isStringArray(j.agent_query_rules));
  return jobsOk ? body as unknown as ScheduledJobsPage : undefined;
}

export function decodeReserve(body: unknown): BatchReserveResponse | undefined {
  if (!isRecord(body) || !isStringArray(body.reserved)) return undefined;
  // An empty not_reserved may be left out by a terse server; nothing is lost by treating it as [].
  const notReserved = body.not_reserved ?? [];
  return isStringArray(notReserved) ? { reserved: body.reserved, not_reserved: notReserved } : undefined;
}

export function decodeJob(body: unknown): JobDetails | undefined {
  if (!isRecord(body) || typeof body.id !== "string" || !isRecord(body.env)) return undefined;
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(body.env)) {
    if (typeof v !== "string") return undefined;
    env[k] = v;
  }
  // A job without a command (a plugin-only step) may come back with null.
  const command = body.command ?? "";
  return typeof command === "string" ? { id: body.id, env, command } : undefined;
}

export function decodeStates(body: unknown): JobStatesResponse | undefined {
  if (!isRecord(body) || !isRecord(body.states)) return undefined;
  return Object.values(body.states).every((s) => typeof s === "string") ? body as unknown as JobStatesResponse : undefined;
}

export function decodeNotifications(body: unknown): NotificationsResponse | undefined {
  if (!isRecord(body)) return undefined;
  const errors = body.errors ?? [];
  if (!Array.isArray(errors)) return undefined;
  const ok = errors.every((e) => isRecord(e) && typeof e.error === "string" && Array.isArray(e.indexes)
    && e.indexes.every((i) => typeof i === "number"));
  return ok ? { errors: errors as NotificationsResponse["errors"] } : undefined;
}

export function decodeJobTokens(body: unknown): JobAcquisitionTokensResponse | undefined {
  if (!isRecord(body) || !Array.isArray(body.job_acquisition_tokens)) return undefined;
  const ok = body.job_acquisition_tokens.every((t) => isRecord(t) && typeof t.job_uuid === "string" && typeof t.job_acquisition_token === "string");
  const notIssued = body.not_issued ?? [];
  return ok && isStringArray(notIssued) ? { job_acquisition_tokens: body.job_acquisition_tokens as JobAcquisitionTokensResponse["job_acquisition_tokens"], not_issued: notIssued } : undefined;
}
