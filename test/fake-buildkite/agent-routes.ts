import {
  HttpError,
  iso,
  json,
  jsonObject,
  optionalString,
  param,
  type Params,
  type Reply,
  type Route,
} from "./http.js";
import { AGENT_INTERVALS } from "./model.js";
import type { AgentRecord, JobRecord } from "./records.js";
import type { ApiContext, FakeStore } from "./store.js";
import { agentJobObject } from "./views.js";

/**
 * The agent API's session routes (§2.3, §6.4): register, connect, heartbeat, ping, disconnect, and taking a job
 * (acquire for `--acquire-job` agents, accept for ping-dispatched ones). Enough for a real `buildkite-agent`.
 */

/** The agent behind a session token; the router has already checked the token class. */
function sessionAgent(ctx: ApiContext): AgentRecord {
  if (ctx.principal.class !== "session") throw new HttpError(401, "an agent session token is required");
  return ctx.principal.agent;
}

function strings(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
}

function register(ctx: ApiContext): Reply {
  const body = jsonObject(ctx.req);
  const { principal, store } = ctx;
  let boundJob: string | undefined;
  if (principal.class === "jat") {
    // A JAT registers exactly one agent, which may then acquire only the JAT's job (§2.1).
    principal.jat.used = true;
    boundJob = principal.jat.job_uuid;
  }
  const tags = strings(body.meta_data);
  const agent = store.registerAgent({
    name: optionalString(body, "name"),
    tags,
    ignoreInDispatches: body.ignore_in_dispatches === true,
    features: strings(body.features),
    boundJob,
  });
  return json(200, {
    id: agent.id,
    name: agent.name,
    access_token: agent.session_token,
    // Empty: a non-empty endpoint would move the agent away from the fake for every later call.
    endpoint: "",
    request_headers: {},
    ...AGENT_INTERVALS,
    meta_data: tags,
  });
}

function connect(ctx: ApiContext): Reply {
  const agent = sessionAgent(ctx);
  agent.connection_state = "connected";
  return json(200, { id: agent.id, connection_state: "connected" });
}

function heartbeat(ctx: ApiContext): Reply {
  const agent = sessionAgent(ctx);
  const now = ctx.store.now();
  agent.last_heartbeat_at = now;
  // Always 2xx JSON for a live session: a 4xx here makes the agent cancel its job (§2.3 step 3).
  const sentAt = optionalString(jsonObject(ctx.req), "sent_at") ?? iso(now);
  return json(200, { sent_at: sentAt, received_at: iso(now) });
}

function disconnect(ctx: ApiContext): Reply {
  ctx.store.endSession(sessionAgent(ctx), "disconnected");
  return json(200, { connection_state: "disconnected" });
}

/** Hands a job to an agent: job token, agent variables in the job env (§6.4 acquire). */
function bindJob(store: FakeStore, job: JobRecord, agent: AgentRecord): string {
  job.agent_uuid = agent.id;
  agent.job_uuid = job.uuid;
  const agentEnv: Record<string, string> = { BUILDKITE_AGENT_ID: agent.id, BUILDKITE_AGENT_NAME: agent.name };
  for (const tag of agent.tags) {
    const eq = tag.indexOf("=");
    if (eq <= 0) continue;
    const key = tag
      .slice(0, eq)
      .toUpperCase()
      .replace(/[^A-Z0-9]/g, "_");
    agentEnv[`BUILDKITE_AGENT_META_DATA_${key}`] = tag.slice(eq + 1);
  }
  job.env = { ...job.env, ...agentEnv };
  return store.issueJobToken(job);
}

function ping(ctx: ApiContext): Reply {
  const agent = sessionAgent(ctx);
  const { store } = ctx;
  if (agent.stop_requested) return json(200, { action: "disconnect" });
  if (agent.paused) return json(200, { action: "pause" });
  const queue = store.queue(agent.queue_key);
  if (!agent.ignore_in_dispatches && agent.job_uuid === undefined && !queue.paused) {
    // Ordinary dispatch for agents that are not pinned to one job: oldest scheduled job of the agent's queue.
    const next = [...store.jobs.values()]
      .filter((j) => j.state === "scheduled" && j.queue_key === agent.queue_key)
      .sort((a, b) => a.scheduled_at - b.scheduled_at || a.seq - b.seq)[0];
    if (next) {
      store.apply(next, "dispatch");
      next.agent_uuid = agent.id;
      agent.job_uuid = next.uuid;
      return json(200, { job: agentJobObject(next, undefined) });
    }
  }
  return json(200, { action: "idle" });
}

function acquire(ctx: ApiContext, params: Params): Reply {
  const agent = sessionAgent(ctx);
  const { store } = ctx;
  const uuid = param(params, "uuid");
  const job = store.jobs.get(uuid);
  // Another queue's job looks the same as no job to a cluster token (agent-stack-k8s #154).
  if (job?.queue_key !== agent.queue_key) throw new HttpError(404, `No job found with id ${uuid}`);
  if (agent.bound_job_uuid !== undefined && agent.bound_job_uuid !== uuid) {
    throw new HttpError(403, "this agent registered with a job acquisition token for another job");
  }
  if (ctx.req.headers["x-buildkite-lock-acquire-job"] !== "1") {
    throw new HttpError(422, "acquire requires the header X-Buildkite-Lock-Acquire-Job: 1");
  }
  // 423 + Retry-After for a locked job, 422 for one that can never be acquired (the agent then exits 27).
  store.apply(job, "acquire", `Job ${uuid} is not in a state that can be acquired (it is ${job.state})`);
  const token = bindJob(store, job, agent);
  return json(200, agentJobObject(job, token));
}

function accept(ctx: ApiContext, params: Params): Reply {
  const agent = sessionAgent(ctx);
  const { store } = ctx;
  const job = store.job(param(params, "uuid"));
  if (job.agent_uuid !== agent.id) throw new HttpError(422, `Job ${job.uuid} was not assigned to this agent`);
  store.apply(job, "accept");
  const token = bindJob(store, job, agent);
  return json(200, agentJobObject(job, token));
}

/** The agent's session routes. */
export const agentRoutes: readonly Route<ApiContext>[] = [
  { name: "agent.register", method: "POST", pattern: "/v3/register", auth: ["agent", "jat"], handle: register },
  { name: "agent.connect", method: "POST", pattern: "/v3/connect", auth: ["session"], handle: connect },
  { name: "agent.heartbeat", method: "POST", pattern: "/v3/heartbeat", auth: ["session"], handle: heartbeat },
  { name: "agent.ping", method: "GET", pattern: "/v3/ping", auth: ["session"], handle: ping },
  { name: "agent.disconnect", method: "POST", pattern: "/v3/disconnect", auth: ["session"], handle: disconnect },
  { name: "agent.acquire", method: "PUT", pattern: "/v3/jobs/:uuid/acquire", auth: ["session"], handle: acquire },
  { name: "agent.accept", method: "PUT", pattern: "/v3/jobs/:uuid/accept", auth: ["session"], handle: accept },
];
