import type { FakeControl } from "./control.js";
import { parseFault } from "./faults.js";
import {
  HttpError,
  json,
  jsonObject,
  optionalString,
  param,
  type FakeRequest,
  type Params,
  type Reply,
  type Route,
} from "./http.js";
import { parseSeedBody } from "./seed.js";

/**
 * The fake-only test-control API under `/_fake` (§6.6). Open (no token), never rate limited or fault-injected, and
 * left out of the request log, so it does not disturb what a test asserts about its clients.
 */

/** What a control route handler works with. */
export interface ControlContext {
  readonly control: FakeControl;
  readonly req: FakeRequest;
}

type Handler = (ctx: ControlContext, params: Params) => Reply;

const JOB_ACTIONS = ["cancel", "timeout", "unlock", "expire"] as const;

function jobAction(ctx: ControlContext, params: Params): Reply {
  const action = param(params, "action");
  const uuid = param(params, "uuid");
  const known = JOB_ACTIONS.find((a) => a === action);
  if (!known) throw new HttpError(404, `unknown job action ${action}; use one of ${JOB_ACTIONS.join(", ")}`);
  return json(200, ctx.control[known](uuid));
}

function queueAction(ctx: ControlContext, params: Params): Reply {
  const key = param(params, "key");
  switch (param(params, "action")) {
    case "pause":
      return json(200, ctx.control.pauseQueue(key));
    case "resume":
      return json(200, ctx.control.resumeQueue(key));
    default:
      throw new HttpError(404, "unknown queue action; use pause or resume");
  }
}

function agentAction(ctx: ControlContext, params: Params): Reply {
  const uuid = param(params, "uuid");
  switch (param(params, "action")) {
    case "pause":
      ctx.control.pauseAgent(uuid, true);
      break;
    case "resume":
      ctx.control.pauseAgent(uuid, false);
      break;
    case "stop":
      ctx.control.stopAgent(uuid);
      break;
    default:
      throw new HttpError(404, "unknown agent action; use pause, resume or stop");
  }
  return json(200, {});
}

function tokens(ctx: ControlContext): Reply {
  const body = jsonObject(ctx.req);
  const token = optionalString(body, "token");
  if (body.revoke === true) {
    if (token === undefined) throw new HttpError(422, "token is required to revoke");
    ctx.control.revokeToken(token);
    return json(200, { revoked: true });
  }
  const description = optionalString(body, "description");
  const value = ctx.control.createToken({
    ...(token === undefined ? {} : { token }),
    ...(description === undefined ? {} : { description }),
  });
  return json(201, { token: value });
}

function rateLimits(ctx: ControlContext): Reply {
  const enabled = jsonObject(ctx.req).enabled;
  if (typeof enabled !== "boolean") throw new HttpError(422, "enabled must be true or false");
  ctx.control.setRateLimits(enabled);
  return json(200, { enabled });
}

const route = (method: string, pattern: string, handle: Handler): Route<ControlContext> => ({
  name: `fake.${method} ${pattern}`,
  method,
  pattern,
  auth: [],
  handle,
});

/** Every control route. */
export const controlRoutes: readonly Route<ControlContext>[] = [
  route("POST", "/_fake/jobs", (ctx) => json(201, ctx.control.seedJob(parseSeedBody(jsonObject(ctx.req))))),
  route("GET", "/_fake/jobs", (ctx) => json(200, ctx.control.jobs())),
  route("GET", "/_fake/jobs/:uuid", (ctx, p) => json(200, ctx.control.job(param(p, "uuid")))),
  route("POST", "/_fake/jobs/:uuid/:action", jobAction),
  route("GET", "/_fake/queues", (ctx) => json(200, ctx.control.queues())),
  route("POST", "/_fake/queues/:key/:action", queueAction),
  route("POST", "/_fake/tokens", tokens),
  route("GET", "/_fake/stacks", (ctx) => json(200, ctx.control.stacks())),
  route("GET", "/_fake/agents", (ctx) => json(200, ctx.control.agents())),
  route("POST", "/_fake/agents/:uuid/:action", agentAction),
  route("POST", "/_fake/faults", (ctx) => {
    ctx.control.injectFault(parseFault(jsonObject(ctx.req)));
    return json(201, ctx.control.pendingFaults());
  }),
  route("GET", "/_fake/faults", (ctx) => json(200, ctx.control.pendingFaults())),
  route("DELETE", "/_fake/faults", (ctx) => {
    ctx.control.clearFaults();
    return json(200, []);
  }),
  route("GET", "/_fake/requests", (ctx) => json(200, ctx.control.requests())),
  route("DELETE", "/_fake/requests", (ctx) => {
    ctx.control.clearRequests();
    return json(200, []);
  }),
  route("PUT", "/_fake/rate-limits", rateLimits),
  route("POST", "/_fake/sweep", (ctx) => {
    ctx.control.sweep();
    return json(200, {});
  }),
];
