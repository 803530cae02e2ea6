import type { IncomingMessage, ServerResponse } from "node:http";
import { gunzipSync } from "node:zlib";
import { agentJobRoutes } from "./agent-job-routes.js";
import { agentRoutes } from "./agent-routes.js";
import type { FakeControl } from "./control.js";
import { controlRoutes } from "./control-routes.js";
import type { Faults } from "./faults.js";
import { HttpError, iso, matchRoute, pathSegments, type FakeRequest, type Reply, type Route } from "./http.js";
import type { RateLimiter } from "./rate-limit.js";
import { loggableBody, loggableHeaders, type RequestLog } from "./request-log.js";
import { stackJobRoutes } from "./stacks-job-routes.js";
import { stacksRoutes } from "./stacks-routes.js";
import type { ApiContext, FakeStore, Principal } from "./store.js";

/** Every Buildkite API route the fake implements; anything else is 404 "not implemented in fake". */
const API_ROUTES: readonly Route<ApiContext>[] = [
  ...stacksRoutes,
  ...stackJobRoutes,
  ...agentRoutes,
  ...agentJobRoutes,
];

/** A body larger than this is refused; real log chunks are ≤ 100 KiB and job payloads a few hundred KiB. */
const MAX_BODY_BYTES = 64 * 1024 * 1024;

/** What the dispatcher needs from the server. */
export interface DispatchDeps {
  readonly store: FakeStore;
  readonly control: FakeControl;
  readonly faults: Faults;
  readonly limiter: RateLimiter;
  readonly log: RequestLog;
  /** Waits `ms` of real time (injected latency); the server cuts it short when it stops. */
  readonly sleep: (ms: number) => Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of req) {
    const buf = Buffer.isBuffer(part) ? part : Buffer.from(String(part));
    size += buf.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, "request body too large");
    parts.push(buf);
  }
  const raw = Buffer.concat(parts);
  if (req.headers["content-encoding"] !== "gzip" || raw.length === 0) return raw;
  try {
    // Log chunks arrive gzip-compressed (§2.3 step 7).
    return gunzipSync(raw);
  } catch {
    throw new HttpError(400, "body is not valid gzip");
  }
}

function tokenOf(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (header === undefined) return undefined;
  const match = /^Token\s+(\S+)\s*$/i.exec(header);
  // A malformed header carries no usable token; an empty string identifies as an invalid token, not a missing one.
  return match?.[1] ?? "";
}

function errorReply(err: unknown, headers: Readonly<Record<string, string>> = {}): Reply {
  if (err instanceof HttpError) {
    return {
      status: err.status,
      body: { message: err.message, ...err.extra },
      headers: { ...headers, ...err.headers },
    };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { status: 500, body: { message: `fake Buildkite internal error: ${message}` }, headers };
}

function send(res: ServerResponse, reply: Reply): void {
  if (res.destroyed || res.writableEnded) return;
  const headers: Record<string, string> = { ...reply.headers };
  let payload: Buffer | undefined;
  if (reply.status !== 204 && reply.body !== undefined) {
    if (typeof reply.body === "string" || Buffer.isBuffer(reply.body)) {
      payload = Buffer.isBuffer(reply.body) ? reply.body : Buffer.from(reply.body);
      headers["Content-Type"] ??= "text/plain; charset=utf-8";
    } else {
      payload = Buffer.from(JSON.stringify(reply.body));
      headers["Content-Type"] = "application/json; charset=utf-8";
    }
  }
  res.writeHead(reply.status, { ...headers, "Content-Length": String(payload?.length ?? 0) });
  res.end(payload);
}

async function handleApi(
  deps: DispatchDeps,
  request: FakeRequest,
  principal: Principal,
  logRoute: (name: string) => void,
): Promise<Reply> {
  const matched = matchRoute(API_ROUTES, request.method, request.segments);
  if (!matched) return errorReply(new HttpError(404, "not implemented in fake"));
  const { route, params } = matched;
  logRoute(route.name);
  const fault = deps.faults.take(route.name);
  if (fault) {
    if (fault.delayMs > 0) await deps.sleep(fault.delayMs);
    if (fault.reply) return fault.reply;
  }
  if (!route.auth.includes(principal.class)) {
    const message =
      principal.class === "none" ? principal.reason : `this endpoint does not accept a ${principal.class} token`;
    return errorReply(new HttpError(401, message));
  }
  deps.store.touch(principal);
  const stackKey = params.key;
  const rate = stackKey === undefined ? undefined : deps.limiter.check(route.name, stackKey);
  if (rate?.rejection) return errorReply(rate.rejection);
  const rateHeaders = rate?.headers ?? {};
  try {
    const reply = route.handle({ store: deps.store, req: request, principal }, params);
    return { ...reply, headers: { ...rateHeaders, ...reply.headers } };
  } catch (err) {
    return errorReply(err, rateHeaders);
  }
}

/**
 * Serves one HTTP request: control routes under `/_fake`, otherwise the Buildkite API with fault injection, token
 * checks, rate limits and a log entry. Time-driven changes are applied first, so every answer reflects the clock.
 */
export async function dispatch(deps: DispatchDeps, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? "/", "http://fake.invalid");
  const method = req.method ?? "GET";
  const isControl = url.pathname === "/_fake" || url.pathname.startsWith("/_fake/");
  let principal: Principal = { class: "none", reason: "not checked" };
  let routeName: string | null = null;
  let body: Buffer = Buffer.alloc(0);
  let reply: Reply;
  try {
    deps.store.sweep();
    principal = deps.store.identify(tokenOf(req));
    body = await readBody(req);
    const request: FakeRequest = {
      method,
      path: url.pathname,
      segments: pathSegments(url.pathname),
      query: url.searchParams,
      headers: req.headers,
      body,
    };
    if (isControl) {
      const matched = matchRoute(controlRoutes, method, request.segments);
      reply = matched
        ? matched.route.handle({ control: deps.control, req: request }, matched.params)
        : errorReply(new HttpError(404, "not implemented in fake"));
    } else {
      reply = await handleApi(deps, request, principal, (name) => {
        routeName = name;
      });
    }
  } catch (err) {
    reply = errorReply(err);
  }
  send(res, reply);
  if (isControl) return;
  deps.log.add({
    at: iso(deps.store.now()),
    method,
    path: url.pathname,
    query: Object.fromEntries(url.searchParams),
    route: routeName,
    token_class: principal.class,
    headers: loggableHeaders(req.headers),
    body: loggableBody(body, req.headers["content-type"]),
    status: reply.status,
  });
}
