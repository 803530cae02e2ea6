import {
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  RequestContext,
  RequiredError,
  type ConfigurationOptions,
  type HttpMethod,
  type KubeConfig,
} from "@kubernetes/client-node";
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest, type AgentOptions } from "node:https";
import type { Readable } from "node:stream";

/** Named in the API server's audit log and metrics, as client-node's generated clients name themselves. */
const USER_AGENT = "buildkite-operator";

/**
 * The lean request path for the operator's hot requests (a job's pod, token Secret, BuildkiteJob, status patches,
 * Events, deletes) and for its informers' lists and watches (lean-informer.ts).
 *
 * Why it exists: a CPU profile of the operator under a burst of jobs put about half of its CPU in
 * @kubernetes/client-node 2.x's request stack, not in the operator: WHATWG fetch over undici, web streams, HTTP/2, and
 * its `ObjectSerializer` walking every request and response through the typed models (docs/performance.md). These
 * requests need none of that: their bodies are plain JSON in and out. So they are sent with `JSON.stringify`, parsed
 * with `JSON.parse` (date-time fields stay ISO strings), over keep-alive HTTP/1.1 connections of node:https (measured
 * as cheap for this process as undici's `request` over client-node's shared HTTP/2 connection, and cheaper for the
 * API server: docs/performance.md).
 *
 * What stays client-node's: every request passes through the KubeConfig's `applySecurityAuthentication` with a
 * client-node `RequestContext`, so the hooks on it (request counting, the leader's write guard) see every request, and
 * bearer tokens are read afresh per request; `ConfigurationOptions` middleware (`setHeaderOptions`) applies; an error
 * status is thrown as client-node's `ApiException` (`code`, and `body` the API server's Status text).
 */

/**
 * Connections per API server for requests: one per worker of the two controllers (16 each); more requests wait for
 * one. Watches have a pool of their own without a limit: each holds its connection for minutes, and a request must
 * never wait behind them (nor a watch behind requests).
 */
const MAX_SOCKETS = 32;
/** Idle connections are closed before the API server closes them (its idle timeout is 90 s), not while in use. */
const IDLE_MS = 60_000;
/** TCP keep-alive probes after 30 s idle, as client-go and client-node do. */
const KEEP_ALIVE_MS = 30_000;
/** Parameters that are not sent in the query: they are in the path, or the body. */
const NOT_QUERY: ReadonlySet<string> = new Set(["namespace", "name", "group", "version", "plural", "body"]);
const MERGE_PATCH = "application/merge-patch+json";

type Params = object;
interface Exchange {
  status: number;
  headers: Record<string, string>;
  text: string;
}

/** Which connections a request takes: {@link MAX_SOCKETS} for requests, as many as there are watches for watches. */
type Pool = "requests" | "watches";

/** Sends requests for one KubeConfig (one cluster, one user) over its own keep-alive connections. */
export class LeanTransport {
  readonly #agents = new Map<Pool, Promise<HttpAgent>>();

  constructor(private readonly kc: KubeConfig) {}

  /**
   * Sends `params.body` as JSON (`contentType` unless a middleware of `options` sets another) to `path` of the
   * cluster's server, with the other params that are not in the path as the query. Resolves with the parsed response.
   */
  async send<T>(
    method: HttpMethod,
    path: string,
    params: Params,
    options?: ConfigurationOptions,
    contentType = "application/json",
  ): Promise<T> {
    let ctx = new RequestContext(`${this.server()}${path}`, method);
    ctx.setHeaderParam("Accept", "application/json");
    for (const [key, value] of Object.entries(params)) {
      if (!NOT_QUERY.has(key) && value !== undefined) ctx.setQueryParam(key, queryValue(key, value));
    }
    const body = "body" in params && params.body !== undefined ? JSON.stringify(params.body) : undefined;
    if (body !== undefined) ctx.setHeaderParam("Content-Type", contentType);
    await this.kc.applySecurityAuthentication(ctx);
    for (const middleware of options?.middleware ?? []) ctx = await middleware.pre(ctx).toPromise();
    const response = await this.exchange(ctx, body);
    if (response.status < 200 || response.status > 299) throw apiException(response);
    return (response.text === "" ? undefined : JSON.parse(response.text)) as T;
  }

  /** GETs `path` (a collection, with its query) as parsed JSON: an informer's list. An error status rejects. */
  async list(path: string, signal: AbortSignal): Promise<unknown> {
    const response = await this.exchange(await this.authenticatedGet(path, signal), undefined);
    if (response.status < 200 || response.status > 299) throw apiException(response);
    return JSON.parse(response.text);
  }

  /**
   * Opens a watch (`path` with `watch=true` in its query) and resolves, once the API server has answered, with the body
   * unread: a stream of one JSON event per line for as long as the watch lasts. Undefined when the API server answers
   * 410 Gone (the resourceVersion is too old: list again); any other error status rejects. `signal` ends the watch.
   */
  async watch(path: string, signal: AbortSignal): Promise<Readable | undefined> {
    const res = await this.open(await this.authenticatedGet(path, signal), undefined, "watches");
    const status = res.statusCode ?? 0;
    if (status === 200) return res;
    const text = await readText(res);
    if (status === 410) return undefined;
    throw apiException({ status, headers: flatHeaders(res.headers), text });
  }

  /** Closes the idle connections (tests; the operator keeps its transport for its life). */
  close(): void {
    for (const agent of this.#agents.values())
      void agent.then((a) => {
        a.destroy();
      });
  }

  /** A GET's context, through the KubeConfig's authentication (and so its hooks), as every request of `send`. */
  private async authenticatedGet(path: string, signal: AbortSignal): Promise<RequestContext> {
    const ctx = new RequestContext(`${this.server()}${path}`, "GET");
    ctx.setHeaderParam("Accept", "application/json");
    ctx.setSignal(signal);
    await this.kc.applySecurityAuthentication(ctx);
    return ctx;
  }

  private server(): string {
    const server = this.kc.getCurrentCluster()?.server;
    if (!server) throw new Error("no current cluster in the KubeConfig");
    return server;
  }

  private async exchange(ctx: RequestContext, body: string | undefined): Promise<Exchange> {
    const res = await this.open(ctx, body, "requests");
    return { status: res.statusCode ?? 0, headers: flatHeaders(res.headers), text: await readText(res) };
  }

  /** Sends the request and resolves with the response once its head has arrived; the caller reads the body. */
  private async open(ctx: RequestContext, body: string | undefined, pool: Pool): Promise<IncomingMessage> {
    const url = new URL(ctx.getUrl());
    const agent = await this.agent(pool);
    const signal = ctx.getSignal();
    const headers = {
      "User-Agent": USER_AGENT,
      ...ctx.getHeaders(),
      ...(body === undefined ? {} : { "Content-Length": Buffer.byteLength(body) }),
    };
    const send = url.protocol === "https:" ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const request = send(
        url,
        { method: ctx.getHttpMethod(), agent, headers, ...(signal ? { signal } : {}) },
        resolve,
      );
      request.on("error", reject);
      // Node sends a DELETE's body without a length unless told; Content-Length is set above for every body.
      request.end(body);
    });
  }

  /** One agent per pool, built on first use; a failed build is not remembered, the next request tries again. */
  private agent(pool: Pool): Promise<HttpAgent> {
    let agent = this.#agents.get(pool);
    if (agent === undefined) {
      agent = this.buildAgent(pool === "requests" ? MAX_SOCKETS : Infinity).catch((err: unknown) => {
        this.#agents.delete(pool);
        throw err;
      });
      this.#agents.set(pool, agent);
    }
    return agent;
  }

  /**
   * The TLS material (CA, client certificate and key, from files or data, or from an exec plugin) as client-node
   * applies it: read once, as the shared connections of `reuseConnections` (wiring.ts) read it. Bearer tokens are not
   * taken from here but from each request's context.
   */
  private async buildAgent(maxSockets: number): Promise<HttpAgent> {
    const base = { keepAlive: true, keepAliveMsecs: KEEP_ALIVE_MS, maxSockets, timeout: IDLE_MS };
    if (this.server().startsWith("http:")) return new HttpAgent(base);
    const tls: AgentOptions = {};
    await this.kc.applyToHTTPSOptions(tls);
    const { ca, cert, key, pfx, passphrase, rejectUnauthorized, servername } = tls;
    const defined = Object.entries({ ca, cert, key, pfx, passphrase, rejectUnauthorized, servername }).filter(
      ([, value]) => value !== undefined,
    );
    return new HttpsAgent({ ...base, ...(Object.fromEntries(defined) as AgentOptions) });
  }
}

/** As client-node's response processors throw it: 401 without a body, any other error status with the body's text. */
function apiException({ status, headers, text }: Exchange): ApiException<string | undefined> {
  if (status === 401) return new ApiException(status, "Unauthorized", undefined, headers);
  return new ApiException(status, "Unknown API Status Code!", text, headers);
}

/** A response's whole body as text; rejects if the connection fails before its end. */
function readText(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    res.setEncoding("utf8");
    res.on("data", (chunk: string) => (text += chunk));
    res.on("end", () => {
      resolve(text);
    });
    res.on("error", reject);
  });
}

/** Response headers as client-node gives them: one string per name, repeated values joined as fetch joins them. */
function flatHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const flat: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) flat[name] = Array.isArray(value) ? value.join(", ") : value;
  }
  return flat;
}

/** A query parameter's value: the generated clients' are strings, numbers and booleans. */
function queryValue(key: string, value: unknown): string {
  if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") return String(value);
  throw new TypeError(`query parameter ${key} is neither a string, a number nor a boolean`);
}

/** A path segment, encoded; a missing one fails as client-node's generated clients fail. */
function segment(api: string, method: string, params: Params, field: string): string {
  const value = (params as Record<string, unknown>)[field];
  if (typeof value !== "string") throw new RequiredError(api, method, field);
  return encodeURIComponent(value);
}

/** Path of a namespaced core/v1 resource (`name` too when given). */
function corePath(method: string, p: Params, resource: string, named: boolean): string {
  const ns = segment("CoreV1Api", method, p, "namespace");
  const name = named ? `/${segment("CoreV1Api", method, p, "name")}` : "";
  return `/api/v1/namespaces/${ns}/${resource}${name}`;
}

/** Path of a namespaced custom object (`name` too when given, and a subresource). */
function customPath(method: string, p: Params, named: boolean, subresource = ""): string {
  const part = (field: string): string => segment("CustomObjectsApi", method, p, field);
  const name = named ? `/${part("name")}${subresource}` : "";
  return `/apis/${part("group")}/${part("version")}/namespaces/${part("namespace")}/${part("plural")}${name}`;
}

/** The core/v1 methods that take the lean path; everything else is the generated client's. */
export type LeanCoreMethods =
  | "createNamespacedPod"
  | "readNamespacedPod"
  | "deleteNamespacedPod"
  | "createNamespacedSecret"
  | "createNamespacedEvent"
  | "patchNamespacedEvent";

/** The custom object methods that take the lean path. */
export type LeanCustomMethods =
  | "createNamespacedCustomObject"
  | "getNamespacedCustomObject"
  | "patchNamespacedCustomObject"
  | "patchNamespacedCustomObjectStatus"
  | "deleteNamespacedCustomObject";

function leanCoreMethods(t: LeanTransport): Pick<CoreV1Api, LeanCoreMethods> {
  return {
    createNamespacedPod: (p, o) => t.send("POST", corePath("createNamespacedPod", p, "pods", false), p, o),
    readNamespacedPod: (p, o) => t.send("GET", corePath("readNamespacedPod", p, "pods", true), p, o),
    deleteNamespacedPod: (p, o) => t.send("DELETE", corePath("deleteNamespacedPod", p, "pods", true), p, o),
    createNamespacedSecret: (p, o) => t.send("POST", corePath("createNamespacedSecret", p, "secrets", false), p, o),
    createNamespacedEvent: (p, o) => t.send("POST", corePath("createNamespacedEvent", p, "events", false), p, o),
    patchNamespacedEvent: (p, o) =>
      t.send("PATCH", corePath("patchNamespacedEvent", p, "events", true), p, o, MERGE_PATCH),
  };
}

function leanCustomMethods(t: LeanTransport): Pick<CustomObjectsApi, LeanCustomMethods> {
  return {
    createNamespacedCustomObject: (p, o) => t.send("POST", customPath("createNamespacedCustomObject", p, false), p, o),
    getNamespacedCustomObject: (p, o) => t.send("GET", customPath("getNamespacedCustomObject", p, true), p, o),
    patchNamespacedCustomObject: (p, o) =>
      t.send("PATCH", customPath("patchNamespacedCustomObject", p, true), p, o, MERGE_PATCH),
    patchNamespacedCustomObjectStatus: (p, o) =>
      t.send("PATCH", customPath("patchNamespacedCustomObjectStatus", p, true, "/status"), p, o, MERGE_PATCH),
    deleteNamespacedCustomObject: (p, o) => t.send("DELETE", customPath("deleteNamespacedCustomObject", p, true), p, o),
  };
}

/** `generated` with `lean` in front: the lean methods take precedence, every other one is the generated client's. */
function overlay<T extends object>(generated: T, lean: Partial<T>): T {
  return Object.assign(Object.create(generated) as T, lean);
}

/**
 * A lean transport for `kc`, or undefined when its cluster is reached through a proxy (`proxy-url`), which the lean
 * path does not speak: client-node's clients and informers, which do, are used instead.
 */
export function leanTransport(kc: KubeConfig): LeanTransport | undefined {
  return kc.getCurrentCluster()?.proxyUrl ? undefined : new LeanTransport(kc);
}

/**
 * The operator's core and custom object clients for `kc`: the generated clients of @kubernetes/client-node, with the
 * hot methods on the lean path (same names, parameter objects and errors; responses are plain parsed JSON). A cluster
 * reached through a proxy keeps the generated clients ({@link leanTransport}).
 */
export function leanClients(kc: KubeConfig): { core: CoreV1Api; custom: CustomObjectsApi; transport?: LeanTransport } {
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const transport = leanTransport(kc);
  if (!transport) return { core, custom };
  return {
    core: overlay(core, leanCoreMethods(transport)),
    custom: overlay(custom, leanCustomMethods(transport)),
    transport,
  };
}
