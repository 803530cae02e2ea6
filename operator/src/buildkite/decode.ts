import type {
  BatchReserveResponse,
  JobAcquisitionTokensResponse,
  JobDetails,
  JobStatesResponse,
  NotificationsResponse,
  ScheduledJob,
  ScheduledJobsPage,
  Stack,
  TokenIdentity,
} from "./types.js";

/**
 * Checks of Stacks API response bodies. Each decoder checks every field the operator reads and returns a fresh object
 * holding exactly those (the types in types.ts declare nothing else), so a body of the wrong shape fails here, naming
 * the field, instead of as a TypeError or a bad Kubernetes object deep in a controller. Fields the operator does not
 * read are not looked at: a server that adds, drops or changes them costs nothing.
 */

/** A response body without a field the operator reads, or with it of the wrong type. */
export class ShapeError extends Error {
  override readonly name = "ShapeError";

  /** `field` is a path such as `jobs[3].pipeline.slug`. The value itself is never quoted: bodies may hold tokens. */
  constructor(
    readonly field: string,
    expected: string,
    value: unknown,
  ) {
    super(`${field} ${value === undefined ? "is missing" : `is ${kind(value)}`}, expected ${expected}`);
  }
}

type Json = Record<string, unknown>;

function kind(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

const at = (path: string, key: string): string => (path === "" ? key : `${path}.${key}`);

function object(value: unknown, field: string): Json {
  if (typeof value === "object" && value !== null && !Array.isArray(value)) return value as Json;
  throw new ShapeError(field, "an object", value);
}

function string(value: unknown, field: string): string {
  if (typeof value === "string") return value;
  throw new ShapeError(field, "a string", value);
}

/** Null and absent both read as null: the docs say nested values may be null, and a terse server may leave them out. */
function nullableString(value: unknown, field: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === "string") return value;
  throw new ShapeError(field, "a string or null", value);
}

function integer(value: unknown, field: string): number {
  if (typeof value === "number" && Number.isInteger(value)) return value;
  throw new ShapeError(field, "a whole number", value);
}

function boolean(value: unknown, field: string): boolean {
  if (typeof value === "boolean") return value;
  throw new ShapeError(field, "true or false", value);
}

function nullableBoolean(value: unknown, field: string): boolean | null {
  return value === undefined || value === null ? null : boolean(value, field);
}

/** An array, each item checked by `item`. Absent reads as empty where `optional` (lists a terse server may omit). */
function array<T>(value: unknown, field: string, item: (v: unknown, field: string) => T, optional = false): T[] {
  if (optional && value === undefined) return [];
  if (!Array.isArray(value)) throw new ShapeError(field, "an array", value);
  return value.map((v, i) => item(v, `${field}[${String(i)}]`));
}

function stringMap(value: unknown, field: string): Record<string, string> {
  const out: Record<string, string> = {};
  // The field's name is built only for an error: a job's env has dozens of keys, and jobs are read on every poll.
  for (const [k, v] of Object.entries(object(value, field)))
    out[k] = typeof v === "string" ? v : string(v, `${field}[${JSON.stringify(k)}]`);
  return out;
}

const ROOT = "body";

export function decodeIdentity(body: unknown): TokenIdentity {
  const b = object(body, ROOT);
  return {
    uuid: string(b.uuid, "uuid"),
    cluster_uuid: nullableString(b.cluster_uuid, "cluster_uuid"),
    cluster_name: nullableString(b.cluster_name, "cluster_name"),
  };
}

export function decodeStack(body: unknown): Stack {
  const b = object(body, ROOT);
  return { key: string(b.key, "key"), cluster_queue_key: string(b.cluster_queue_key, "cluster_queue_key") };
}

function scheduledJob(value: unknown, path: string): ScheduledJob {
  const j = object(value, path);
  // The docs promise these three objects on every job (their values may be null); jobResourceFor reads them.
  const pipeline = object(j.pipeline, at(path, "pipeline"));
  const build = object(j.build, at(path, "build"));
  const step = object(j.step, at(path, "step"));
  return {
    id: string(j.id, at(path, "id")),
    priority: integer(j.priority, at(path, "priority")),
    agent_query_rules: array(j.agent_query_rules, at(path, "agent_query_rules"), string),
    scheduled_at: string(j.scheduled_at, at(path, "scheduled_at")),
    pipeline: { slug: string(pipeline.slug, at(path, "pipeline.slug")) },
    build: {
      number: integer(build.number, at(path, "build.number")),
      branch: nullableString(build.branch, at(path, "build.branch")),
    },
    step: { key: nullableString(step.key, at(path, "step.key")) },
  };
}

export function decodeScheduledJobsPage(body: unknown): ScheduledJobsPage {
  const b = object(body, ROOT);
  const pageInfo = object(b.page_info, "page_info");
  const queue = object(b.cluster_queue, "cluster_queue");
  return {
    jobs: array(b.jobs, "jobs", scheduledJob),
    page_info: {
      has_next_page: boolean(pageInfo.has_next_page, "page_info.has_next_page"),
      end_cursor: nullableString(pageInfo.end_cursor, "page_info.end_cursor"),
    },
    cluster_queue: {
      paused: nullableBoolean(queue.paused, "cluster_queue.paused"),
      dispatch_paused: nullableBoolean(queue.dispatch_paused, "cluster_queue.dispatch_paused"),
    },
  };
}

export function decodeReserve(body: unknown): BatchReserveResponse {
  const b = object(body, ROOT);
  // An empty not_reserved may be left out by a terse server; nothing is lost by treating it as [].
  return {
    reserved: array(b.reserved, "reserved", string),
    not_reserved: array(b.not_reserved, "not_reserved", string, true),
  };
}

export function decodeJob(body: unknown): JobDetails {
  const b = object(body, ROOT);
  // A job without a command (a plugin-only step) may come back with null.
  return { id: string(b.id, "id"), env: stringMap(b.env, "env"), command: nullableString(b.command, "command") ?? "" };
}

export function decodeStates(body: unknown): JobStatesResponse {
  return { states: stringMap(object(body, ROOT).states, "states") };
}

export function decodeNotifications(body: unknown): NotificationsResponse {
  const errors = array(
    object(body, ROOT).errors,
    "errors",
    (value, path) => {
      const e = object(value, path);
      return { error: string(e.error, at(path, "error")), indexes: array(e.indexes, at(path, "indexes"), integer) };
    },
    true,
  );
  return { errors };
}

export function decodeJobTokens(body: unknown): JobAcquisitionTokensResponse {
  const b = object(body, ROOT);
  const tokens = array(b.job_acquisition_tokens, "job_acquisition_tokens", (value, path) => {
    const t = object(value, path);
    return {
      job_uuid: string(t.job_uuid, at(path, "job_uuid")),
      job_acquisition_token: string(t.job_acquisition_token, at(path, "job_acquisition_token")),
      expires_at: string(t.expires_at, at(path, "expires_at")),
    };
  });
  return { job_acquisition_tokens: tokens, not_issued: array(b.not_issued, "not_issued", string, true) };
}
