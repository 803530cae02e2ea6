import {
  HttpError,
  json,
  jsonObject,
  optionalInt,
  optionalString,
  param,
  type Params,
  type Reply,
  type Route,
} from "./http.js";
import { TERMINAL_STATES } from "./model.js";
import type { JobRecord } from "./records.js";
import type { ApiContext } from "./store.js";

/**
 * The agent API's job routes (§2.3 steps 6–9): start, log chunks, state polling and finish. They take the job
 * token from acquire/accept; the owning agent's session token is accepted too, as agents before v3.39 sent it.
 */

/** The job named by the path, if the request's token may act on it; otherwise 401 (or 404 for an unknown job). */
function jobAccess(ctx: ApiContext, params: Params): JobRecord {
  const uuid = param(params, "uuid");
  const { principal } = ctx;
  if (principal.class === "job") {
    if (principal.job.uuid !== uuid) throw new HttpError(401, "this job token is for another job");
    return principal.job;
  }
  const job = ctx.store.job(uuid);
  if (principal.class !== "session" || job.agent_uuid !== principal.agent.id) {
    throw new HttpError(401, "this token may not act on this job");
  }
  return job;
}

function start(ctx: ApiContext, params: Params): Reply {
  const job = jobAccess(ctx, params);
  const { store } = ctx;
  store.apply(job, "start");
  // Times come from the fake's clock, not the agent's body, so they agree with everything else a test controls.
  job.started_at ??= store.now();
  return json(200, {});
}

const LOGGING_STATES = new Set(["running", "canceling", "timing_out"]);

function queryInt(ctx: ApiContext, name: string, min: number): number {
  const text = ctx.req.query.get(name);
  const n = text === null ? Number.NaN : Number(text);
  if (!Number.isInteger(n) || n < min) throw new HttpError(400, `query parameter ${name} must be an integer ≥ ${min}`);
  return n;
}

function chunks(ctx: ApiContext, params: Params): Reply {
  const job = jobAccess(ctx, params);
  if (!LOGGING_STATES.has(job.state)) throw new HttpError(422, `Job ${job.uuid} is ${job.state}; it takes no more log`);
  const sequence = queryInt(ctx, "sequence", 0);
  const offset = queryInt(ctx, "offset", 0);
  const size = queryInt(ctx, "size", 0);
  // The server already gunzipped the body (Content-Encoding: gzip); size is the raw length (§2.3 step 7).
  const data = ctx.req.body;
  if (data.length !== size) throw new HttpError(422, `chunk ${sequence} is ${data.length} bytes, not size=${size}`);
  // Keyed by sequence, so a retried upload replaces itself; the log is assembled by offset.
  job.chunks.set(sequence, { sequence, offset, size, data: Buffer.from(data) });
  return json(200, {});
}

function state(ctx: ApiContext, params: Params): Reply {
  const job = jobAccess(ctx, params);
  // The agent polls this for canceling/timing_out; it is how cancellation reaches a running agent (§3.3).
  return json(200, { id: job.uuid, state: job.state });
}

function finish(ctx: ApiContext, params: Params): Reply {
  const job = jobAccess(ctx, params);
  const { store } = ctx;
  const body = jsonObject(ctx.req);
  // finished_at is set by the transition from the fake's clock. The agent sends exit_status as a string (§2.3 step 9); optionalInt accepts either. Everything is read before
  // the state changes, so a malformed body leaves the job as it was.
  const exitStatus = optionalInt(body, "exit_status") ?? -1;
  const signal = optionalString(body, "signal");
  const signalReason = optionalString(body, "signal_reason");
  const chunksFailed = optionalInt(body, "chunks_failed_count") ?? 0;
  const refusal = TERMINAL_STATES.has(job.state) ? `Job ${job.uuid} has already finished` : undefined;
  store.apply(job, "agent_finish", refusal);
  job.exit_status = exitStatus;
  job.signal = signal;
  job.signal_reason = signalReason;
  job.chunks_failed_count = chunksFailed;
  // The job token dies with the job (§2.1).
  if (job.job_token) job.job_token.revoked = true;
  return json(200, {});
}

/** The routes an agent uses while running a job. */
export const agentJobRoutes: readonly Route<ApiContext>[] = [
  { name: "agent.start", method: "PUT", pattern: "/v3/jobs/:uuid/start", auth: ["job", "session"], handle: start },
  { name: "agent.chunks", method: "POST", pattern: "/v3/jobs/:uuid/chunks", auth: ["job", "session"], handle: chunks },
  { name: "agent.job-state", method: "GET", pattern: "/v3/jobs/:uuid", auth: ["job", "session"], handle: state },
  { name: "agent.finish", method: "PUT", pattern: "/v3/jobs/:uuid/finish", auth: ["job", "session"], handle: finish },
];
