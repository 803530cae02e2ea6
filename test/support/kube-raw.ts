import { HttpMethod, RequestContext, type KubeConfig } from "@kubernetes/client-node";
import type { Readable } from "node:stream";

/** A non-2xx answer of the API server: `code` is its HTTP status, as field-manager's `isNotFound` and co. read it. */
export class KubeRequestError extends Error {
  override name = "KubeRequestError";
  constructor(
    readonly code: number,
    /** The API server's metav1.Status, as JSON text. */
    readonly body: string,
    what: string,
  ) {
    super(`${what} answered ${String(code)}`);
  }
}

type Dispatcher = NonNullable<ReturnType<RequestContext["getDispatcher"]>>;
/** An answer whose body is a Node.js stream (undici's `request`), read or dumped by the caller. */
export type RawAnswer = Awaited<ReturnType<Dispatcher["request"]>>;

/** How long the kubeconfig's headers are reused before they are applied again (a bearer token may rotate). */
const HEADERS_TTL_MS = 30_000;

export const STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json";

/**
 * Kubernetes API requests as JSON text over undici's `request`, for the harness's hot paths (the fast runner's status
 * writes, the benchmark's watches): client-node's typed calls go through WHATWG fetch and web streams and convert
 * every request and answer through its models (ObjectSerializer), which was most of the harness's CPU per job. The
 * credentials are the kubeconfig's, with whatever its `applySecurityAuthentication` adds (the benchmark's
 * impersonation), and one connection pool per client.
 */
export class KubeRaw {
  readonly server: string;
  #dispatcher: Dispatcher | undefined;
  #headers: { at: number; value: Record<string, string> } | undefined;

  constructor(private readonly kc: KubeConfig) {
    const server = kc.getCurrentCluster()?.server;
    if (server === undefined) throw new Error("kube-raw: the kubeconfig has no current cluster");
    this.server = server;
  }

  /** Sends a request; the caller reads or dumps the answer's body. */
  async request(
    method: "GET" | "PATCH" | "POST" | "DELETE",
    path: string,
    options: { body?: string; contentType?: string; signal?: AbortSignal } = {},
  ): Promise<RawAnswer> {
    const headers = await this.#auth();
    const dispatcher = this.#dispatcher;
    if (!dispatcher) throw new Error("kube-raw: the kubeconfig gave no HTTP dispatcher");
    return dispatcher.request({
      origin: this.server,
      path,
      method,
      headers: {
        ...headers,
        accept: "application/json",
        ...(options.contentType === undefined ? {} : { "content-type": options.contentType }),
      },
      ...(options.body === undefined ? {} : { body: options.body }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
  }

  /** A request whose answer is not needed: resolves on 2xx (the body unread), else rejects with {@link KubeRequestError}. */
  async send(method: "PATCH" | "POST" | "DELETE", path: string, body: object, contentType: string): Promise<void> {
    const answer = await this.request(method, path, { body: JSON.stringify(body), contentType });
    await check(answer, `${method} ${path}`);
    await answer.body.dump();
  }

  /** GET as parsed JSON; rejects with {@link KubeRequestError} on a non-2xx answer. */
  async get(path: string, signal?: AbortSignal): Promise<unknown> {
    const answer = await this.request("GET", path, signal === undefined ? {} : { signal });
    await check(answer, `GET ${path}`);
    return answer.body.json();
  }

  /** A collection as parsed JSON, for the operator's `LeanInformer` (its `ListWatchSource`). */
  list(path: string, signal: AbortSignal): Promise<unknown> {
    return this.get(path, signal);
  }

  /** Opens a watch for the operator's `LeanInformer`: its body, or undefined on 410 Gone; rejects on another error. */
  async watch(path: string, signal: AbortSignal): Promise<Readable | undefined> {
    const answer = await this.request("GET", path, { signal });
    if (answer.statusCode === 410) {
      await answer.body.dump();
      return undefined;
    }
    await check(answer, `watch ${path}`);
    return answer.body;
  }

  async #auth(): Promise<Record<string, string>> {
    const now = Date.now();
    if (this.#headers && now - this.#headers.at < HEADERS_TTL_MS) return this.#headers.value;
    const context = new RequestContext(this.server, HttpMethod.GET);
    await this.kc.applySecurityAuthentication(context);
    // The first pool is kept: a kubeconfig without a shared one makes a new pool per call, never connected if unused.
    this.#dispatcher ??= context.getDispatcher();
    this.#headers = { at: now, value: context.getHeaders() };
    return this.#headers.value;
  }
}

async function check(answer: RawAnswer, what: string): Promise<void> {
  if (answer.statusCode >= 200 && answer.statusCode < 300) return;
  throw new KubeRequestError(answer.statusCode, await answer.body.text(), what);
}
