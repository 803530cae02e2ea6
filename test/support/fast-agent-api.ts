import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { gzipSync } from "node:zlib";

/**
 * The agent HTTP API as `buildkite-agent start --acquire-job` speaks it (reference `buildkite-api.md` §2.2–2.4), for
 * {@link FastRunner}: one keep-alive connection pool for every simulated agent, no process per job. Tokens go in
 * the Authorization header and nowhere else: no error message or log line made here carries one.
 */

/** What the runner calls itself in User-Agent; the fake logs headers, so a request log tells it from the real agent. */
const USER_AGENT = "buildkite-agent/3.138.1.fast-runner (linux; amd64)";

/** A non-2xx answer or a failed connection; `status` is undefined for network errors (retryable, as the agent deems them). */
export class AgentApiError extends Error {
  override name = "AgentApiError";
  constructor(
    message: string,
    readonly route: string,
    readonly status: number | undefined,
    readonly retryAfterMs: number | undefined,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }

  /** 429, 5xx and network errors are retried by the agent; any other 4xx is final (§2.2). */
  get retryable(): boolean {
    return this.status === undefined || this.status === 429 || this.status >= 500;
  }
}

/** The register response fields a session needs. */
export interface Session {
  readonly endpoint: string;
  readonly accessToken: string;
  /** `Buildkite-*` headers the server asked to have echoed on every later call. */
  readonly headers: Readonly<Record<string, string>>;
  readonly jobStatusIntervalMs: number;
  readonly heartbeatIntervalMs: number;
}

/** What register sends about the agent (§2.3 step 1). */
export interface Registration {
  readonly name: string;
  readonly tags: readonly string[];
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: unknown;
}

/** One client for every simulated agent; `maxSockets` bounds the connections per host, `close()` ends them. */
export class AgentApi {
  readonly #http: HttpAgent;
  readonly #https: HttpsAgent;

  constructor(maxSockets: number) {
    this.#http = new HttpAgent({ keepAlive: true, maxSockets });
    this.#https = new HttpsAgent({ keepAlive: true, maxSockets });
  }

  close(): void {
    this.#http.destroy();
    this.#https.destroy();
  }

  async register(endpoint: string, token: string, agent: Registration): Promise<Session> {
    const body = {
      name: agent.name,
      hostname: agent.name,
      os: "linux",
      arch: "amd64",
      script_eval_enabled: true,
      ignore_in_dispatches: true,
      version: "3.138.1",
      build: "fast-runner",
      meta_data: agent.tags,
      pid: 1,
      features: ["acquire-job"],
    };
    const answer = await this.#call("agent.register", "POST", endpoint, "register", token, {}, body);
    const reply = record(answer.body);
    const requestHeaders = Object.entries(record(reply.request_headers)).filter(
      (e): e is [string, string] => /^buildkite-/i.test(e[0]) && typeof e[1] === "string",
    );
    return {
      // A non-empty endpoint moves every later call there (§2.3 step 1).
      endpoint: typeof reply.endpoint === "string" && reply.endpoint !== "" ? reply.endpoint : endpoint,
      accessToken: typeof reply.access_token === "string" ? reply.access_token : "",
      headers: Object.fromEntries(requestHeaders),
      // job_status_interval 0 means 1 s (§2.4).
      jobStatusIntervalMs: seconds(reply.job_status_interval, 1) * 1000,
      heartbeatIntervalMs: seconds(reply.heartbeat_interval, 5) * 1000,
    };
  }

  async connect(session: Session): Promise<void> {
    await this.#session("agent.connect", "POST", session, "connect");
  }

  /** PUT jobs/{id}/acquire with the lock header; resolves to the job token. 423/422/404 come back as {@link AgentApiError}. */
  async acquire(session: Session, uuid: string, attempt: number): Promise<string> {
    const lock = { "X-Buildkite-Lock-Acquire-Job": "1", "X-Buildkite-Backoff-Sequence": String(attempt) };
    const answer = await this.#call(
      "agent.acquire",
      "PUT",
      session.endpoint,
      `jobs/${esc(uuid)}/acquire`,
      session.accessToken,
      { ...session.headers, ...lock },
    );
    // Agents before v3.39 used the session token for the job; one without a job token still does (§2.1).
    const token = record(answer.body).token;
    return typeof token === "string" && token !== "" ? token : session.accessToken;
  }

  async start(session: Session, uuid: string, jobToken: string): Promise<void> {
    await this.#call("agent.start", "PUT", session.endpoint, `jobs/${esc(uuid)}/start`, jobToken, session.headers, {
      started_at: new Date().toISOString(),
    });
  }

  /** One gzip log chunk: sequence 1 at offset 0 (§2.3 step 7). */
  async chunk(session: Session, uuid: string, jobToken: string, text: string): Promise<void> {
    const raw = Buffer.from(text, "utf8");
    const path = `jobs/${esc(uuid)}/chunks?sequence=1&offset=0&size=${raw.length}`;
    const headers = { ...session.headers, "Content-Type": "text/plain", "Content-Encoding": "gzip" };
    await this.#call("agent.chunks", "POST", session.endpoint, path, jobToken, headers, gzipSync(raw));
  }

  /** The job's state, as the agent's cancellation checker polls it (§2.3 step 8). */
  async jobState(session: Session, uuid: string, jobToken: string): Promise<string> {
    const answer = await this.#call(
      "agent.job-state",
      "GET",
      session.endpoint,
      `jobs/${esc(uuid)}`,
      jobToken,
      session.headers,
    );
    const state = record(answer.body).state;
    return typeof state === "string" ? state : "";
  }

  async heartbeat(session: Session): Promise<void> {
    await this.#session("agent.heartbeat", "POST", session, "heartbeat", { sent_at: new Date().toISOString() });
  }

  async finish(session: Session, uuid: string, jobToken: string, outcome: FinishBody): Promise<void> {
    const body = { ...outcome, finished_at: new Date().toISOString(), chunks_failed_count: 0 };
    await this.#call(
      "agent.finish",
      "PUT",
      session.endpoint,
      `jobs/${esc(uuid)}/finish`,
      jobToken,
      session.headers,
      body,
    );
  }

  async ping(session: Session): Promise<void> {
    await this.#session("agent.ping", "GET", session, "ping");
  }

  async disconnect(session: Session): Promise<void> {
    await this.#session("agent.disconnect", "POST", session, "disconnect");
  }

  async #session(route: string, method: string, session: Session, path: string, body?: unknown): Promise<void> {
    await this.#call(route, method, session.endpoint, path, session.accessToken, session.headers, body);
  }

  #call(
    route: string,
    method: string,
    endpoint: string,
    path: string,
    token: string,
    headers: Record<string, string>,
    body?: unknown,
  ): Promise<Answer> {
    // Paths are joined to the endpoint without its trailing slash (§2.2).
    const url = new URL(`${endpoint.replace(/\/+$/, "")}/${path}`);
    const payload = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body));
    const all: Record<string, string> = { "User-Agent": USER_AGENT, Authorization: `Token ${token}`, ...headers };
    if (payload) {
      all["Content-Type"] ??= "application/json";
      all["Content-Length"] = String(payload.length);
    }
    const https = url.protocol === "https:";
    return new Promise<Answer>((resolve, reject) => {
      const req = (https ? httpsRequest : httpRequest)(
        url,
        { method, headers: all, agent: https ? this.#https : this.#http, timeout: 30_000 },
        (res) => {
          const parts: Buffer[] = [];
          res.on("data", (part: Buffer) => parts.push(part));
          res.on("error", (err) => {
            reject(new AgentApiError(`${route}: ${err.message}`, route, undefined, undefined, { cause: err }));
          });
          res.on("end", () => {
            const status = res.statusCode ?? 0;
            const parsed = parseJson(Buffer.concat(parts).toString("utf8"));
            if (status >= 200 && status < 300) {
              resolve({ status, headers: res.headers, body: parsed });
              return;
            }
            const message = record(parsed).message;
            reject(
              new AgentApiError(
                `${route} answered ${status}${typeof message === "string" ? `: ${message}` : ""}`,
                route,
                status,
                retryAfterMs(res.headers),
              ),
            );
          });
        },
      );
      req.on("timeout", () => {
        req.destroy(new Error("timed out after 30 s"));
      });
      req.on("error", (err) => {
        reject(new AgentApiError(`${route}: ${err.message}`, route, undefined, undefined, { cause: err }));
      });
      req.end(payload);
    });
  }
}

/** The agent-chosen part of the finish body (§2.3 step 9). */
export interface FinishBody {
  exit_status: string;
  signal?: string;
  signal_reason?: string;
}

/** The `.` of a path segment is escaped as `%2E`, as the agent does (§2.2). */
const esc = (segment: string): string => encodeURIComponent(segment).replace(/\./g, "%2E");

function record(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

function seconds(value: unknown, fallback: number): number {
  return typeof value === "number" && value > 0 ? value : fallback;
}

function parseJson(text: string): unknown {
  try {
    return text === "" ? undefined : (JSON.parse(text) as unknown);
  } catch {
    return undefined;
  }
}

/** Retry-After in seconds (the only form Buildkite sends), as milliseconds. */
function retryAfterMs(headers: IncomingHttpHeaders): number | undefined {
  const value = Number(headers["retry-after"]);
  return headers["retry-after"] !== undefined && Number.isFinite(value) && value >= 0 ? value * 1000 : undefined;
}
