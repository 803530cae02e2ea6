import { randomUUID } from "node:crypto";
import {
  HttpError,
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
import { LIMITS, transition } from "./model.js";
import type { JobRecord, StackRecord } from "./records.js";
import type { ApiContext } from "./store.js";
import { scheduledJobItem, stackView } from "./views.js";

/**
 * The Stacks API (§1.4, §6.3): how an operator registers, lists scheduled jobs and reserves them. Authenticated by
 * a cluster agent token only.
 */

const STACK_KEY = /^[A-Za-z0-9_-]{1,80}$/;
const STACK_TYPES = new Set(["kubernetes", "elastic", "custom"]);

/** The registered stack named by the path, or 404: register must come first (§1.4 S1). */
function stackFor(ctx: ApiContext, params: Params): StackRecord {
  return ctx.store.stack(param(params, "key"));
}

function register(ctx: ApiContext): Reply {
  const body = jsonObject(ctx.req);
  const { key, type, queue_key: queueKey, metadata } = body;
  if (typeof key !== "string" || !STACK_KEY.test(key)) {
    throw new HttpError(422, "key must be 1–80 letters, digits, underscores or hyphens");
  }
  if (typeof type !== "string" || !STACK_TYPES.has(type))
    throw new HttpError(422, "type must be kubernetes, elastic or custom");
  if (typeof queueKey !== "string" || queueKey === "") throw new HttpError(422, "queue_key is required");
  const meta = validMetadata(metadata);
  const { store } = ctx;
  const existing = store.stacks.get(key);
  const active = [...store.stacks.values()].filter((s) => s.state !== "disconnected" && s.key !== key).length;
  if (active >= LIMITS.maxStacks) throw new HttpError(403, "Stack limit exceeded");
  // The queue binding "isn't enforced" (§1.4), so any queue name is accepted and created on first use.
  store.queue(queueKey);
  const stack: StackRecord = existing ?? {
    id: randomUUID(),
    key,
    type,
    queue_key: queueKey,
    metadata: meta,
    state: "connected",
    last_connected_on: store.now(),
  };
  Object.assign(stack, {
    type,
    queue_key: queueKey,
    metadata: meta,
    state: "connected",
    last_connected_on: store.now(),
  });
  store.stacks.set(key, stack);
  return json(existing ? 200 : 201, stackView(stack, store.organization.uuid));
}

function validMetadata(metadata: unknown): Record<string, string> {
  if (!isRecord(metadata)) throw new HttpError(422, "metadata is required (an object of strings, possibly empty)");
  const entries = Object.entries(metadata);
  if (entries.length > 100) throw new HttpError(422, "metadata may have at most 100 keys");
  for (const [k, v] of entries) {
    if (typeof v !== "string") throw new HttpError(422, `metadata ${k} must be a string`);
    if (k.length > 64) throw new HttpError(422, "metadata keys may be at most 64 characters");
    if (v.length > 256) throw new HttpError(422, "metadata values may be at most 256 characters");
  }
  return metadata as Record<string, string>;
}

function deregister(ctx: ApiContext, params: Params): Reply {
  stackFor(ctx, params).state = "disconnected";
  return { status: 204 };
}

/** Cursors are opaque to clients; inside they name the last job returned by its sort position. */
function encodeCursor(job: JobRecord): string {
  return Buffer.from(`${job.scheduled_at}:${job.seq}`).toString("base64url");
}

function decodeCursor(cursor: string): [number, number] {
  const match = /^(-?\d+):(\d+)$/.exec(Buffer.from(cursor, "base64url").toString("utf8"));
  if (!match) throw new HttpError(400, "after is not a cursor returned by this API");
  return [Number(match[1]), Number(match[2])];
}

const bySchedule = (a: JobRecord, b: JobRecord): number => a.scheduled_at - b.scheduled_at || a.seq - b.seq;

function listScheduled(ctx: ApiContext, params: Params): Reply {
  const stack = stackFor(ctx, params);
  const { store, req } = ctx;
  const raw = req.query.get("queue_key");
  if (raw === null || raw === "") throw new HttpError(400, "queue_key is required");
  const queue = store.queues.get(store.queueKey(raw));
  if (!queue) throw new HttpError(404, `No queue found with key ${raw}`);
  const limitText = req.query.get("limit");
  const limit = limitText === null ? LIMITS.defaultListLimit : Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > LIMITS.maxListLimit) {
    throw new HttpError(400, `limit must be an integer from 1 to ${LIMITS.maxListLimit}`);
  }
  const afterText = req.query.get("after");
  const after = afterText === null || afterText === "" ? undefined : decodeCursor(afterText);
  // Reserved jobs are hidden until their reservation expires; listing is not a snapshot (§1.4 S3).
  const candidates = [...store.jobs.values()]
    .filter((j) => j.state === "scheduled" && j.queue_key === queue.key)
    .filter((j) => !after || j.scheduled_at > after[0] || (j.scheduled_at === after[0] && j.seq > after[1]))
    .sort(bySchedule);
  const page = candidates.slice(0, limit);
  const last = page.at(-1);
  const now = store.now();
  for (const job of page) job.listed_at ??= now;
  // Polling is what keeps the stack "connected" in Buildkite's UI.
  stack.state = "connected";
  stack.last_connected_on = now;
  return json(200, {
    jobs: page.map(scheduledJobItem),
    page_info: { has_next_page: candidates.length > page.length, end_cursor: last ? encodeCursor(last) : null },
    // The docs name the pause flag dispatch_paused, the Go client reads paused: send both (§7 question 1).
    cluster_queue: { id: queue.id, key: queue.key, paused: queue.paused, dispatch_paused: queue.paused },
  });
}

function batchReserve(ctx: ApiContext, params: Params): Reply {
  const stack = stackFor(ctx, params);
  const body = jsonObject(ctx.req);
  const uuids = stringArray(body, "job_uuids", LIMITS.maxBatch);
  const seconds = optionalInt(body, "reservation_expiry_seconds") ?? LIMITS.defaultReservationSeconds;
  if (seconds < 1 || seconds > LIMITS.maxReservationSeconds) {
    throw new HttpError(422, `reservation_expiry_seconds must be from 1 to ${LIMITS.maxReservationSeconds}`);
  }
  const reserved: string[] = [];
  const notReserved: string[] = [];
  const { store } = ctx;
  for (const uuid of uuids) {
    const job = store.jobs.get(uuid);
    const heldByOther = job?.reservation !== undefined && job.reservation.stack_key !== stack.key;
    if (!job || heldByOther || !transition(job.state, "reserve").ok) {
      notReserved.push(uuid);
      continue;
    }
    // Reserving again extends the reservation (§1.4 S4).
    store.apply(job, "reserve");
    job.reservation = { stack_key: stack.key, expires_at: store.now() + seconds * 1000 };
    reserved.push(uuid);
  }
  return json(200, { reserved, not_reserved: notReserved });
}

function showJob(ctx: ApiContext, params: Params): Reply {
  stackFor(ctx, params);
  const uuid = param(params, "uuid");
  const job = ctx.store.jobs.get(uuid);
  // Only runnable jobs are shown; a cancelled or taken job is "no longer runnable" (§6.3, best guess).
  if (job?.state !== "scheduled" && job?.state !== "reserved")
    throw new HttpError(404, `No runnable job found with id ${uuid}`);
  return json(200, { id: job.uuid, env: job.env, command: job.command });
}

function getStates(ctx: ApiContext, params: Params): Reply {
  stackFor(ctx, params);
  const uuids = stringArray(jsonObject(ctx.req), "job_uuids", LIMITS.maxBatch);
  const states: Record<string, string> = {};
  // Unknown uuids are left out, as agent-stack-k8s's own fake does (§1.4 S6).
  for (const uuid of uuids) {
    const job = ctx.store.jobs.get(uuid);
    if (job) states[uuid] = job.state;
  }
  return json(200, { states });
}

function tokenInfo(ctx: ApiContext): Reply {
  if (ctx.principal.class !== "agent") throw new HttpError(401, "an agent token is required");
  const { store } = ctx;
  return json(200, {
    uuid: ctx.principal.token.uuid,
    description: ctx.principal.token.description,
    token_type: "cluster",
    organization_slug: store.organization.slug,
    organization_uuid: store.organization.uuid,
    cluster_uuid: store.cluster.uuid,
    cluster_name: store.cluster.name,
  });
}

function metrics(ctx: ApiContext): Reply {
  const { store } = ctx;
  const jobs = { scheduled: 0, running: 0, waiting: 0, total: 0, queues: {} as Record<string, Record<string, number>> };
  for (const job of store.jobs.values()) {
    const kind =
      job.state === "scheduled" || job.state === "reserved"
        ? "scheduled"
        : ["assigned", "accepted", "running", "canceling", "timing_out"].includes(job.state)
          ? "running"
          : ["waiting", "blocked", "limited", "limiting", "pending"].includes(job.state)
            ? "waiting"
            : undefined;
    if (!kind) continue;
    const q = (jobs.queues[job.queue_key] ??= { scheduled: 0, running: 0, waiting: 0, total: 0 });
    q[kind] = (q[kind] ?? 0) + 1;
    q.total = (q.total ?? 0) + 1;
    jobs[kind] += 1;
    jobs.total += 1;
  }
  const agents = { idle: 0, busy: 0, total: 0, queues: {} as Record<string, Record<string, number>> };
  for (const agent of store.agents.values()) {
    if (agent.connection_state !== "connected") continue;
    const kind = agent.job_uuid === undefined ? "idle" : "busy";
    const q = (agents.queues[agent.queue_key] ??= { idle: 0, busy: 0, total: 0 });
    q[kind] = (q[kind] ?? 0) + 1;
    q.total = (q.total ?? 0) + 1;
    agents[kind] += 1;
    agents.total += 1;
  }
  return json(200, { agents, jobs, organization: { slug: store.organization.slug } });
}

/** The Stacks API routes for registration, listing and reservation, plus the token-identity and metrics endpoints that also take an agent token. */
export const stacksRoutes: readonly Route<ApiContext>[] = [
  { name: "stacks.register", method: "POST", pattern: "/v3/stacks/register", auth: ["agent"], handle: register },
  {
    name: "stacks.deregister",
    method: "POST",
    pattern: "/v3/stacks/:key/deregister",
    auth: ["agent"],
    handle: deregister,
  },
  {
    name: "stacks.scheduled-jobs",
    method: "GET",
    pattern: "/v3/stacks/:key/scheduled-jobs",
    auth: ["agent"],
    handle: listScheduled,
  },
  {
    name: "stacks.batch-reserve",
    method: "PUT",
    pattern: "/v3/stacks/:key/scheduled-jobs/batch-reserve",
    auth: ["agent"],
    handle: batchReserve,
  },
  {
    name: "stacks.get-states",
    method: "POST",
    pattern: "/v3/stacks/:key/jobs/get-states",
    auth: ["agent"],
    handle: getStates,
  },
  { name: "stacks.job", method: "GET", pattern: "/v3/stacks/:key/jobs/:uuid", auth: ["agent"], handle: showJob },
  { name: "token", method: "GET", pattern: "/v3/token", auth: ["agent"], handle: tokenInfo },
  { name: "metrics", method: "GET", pattern: "/v3/metrics", auth: ["agent"], handle: metrics },
];
