import { gzipSync } from "node:zlib";

/** A response from the fake, with the JSON body (if any) typed by the caller. */
export interface ApiResponse<T> {
  readonly status: number;
  readonly headers: Headers;
  readonly body: T;
  readonly text: string;
}

/** Options for one {@link FakeApiClient.call}. */
export interface CallOptions {
  /** A JSON body. */
  readonly json?: unknown;
  /** Raw text, sent gzip-compressed as the agent sends log chunks. */
  readonly gzipText?: string;
  /** Overrides the client's token; null sends no Authorization header. */
  readonly token?: string | null;
  readonly headers?: Readonly<Record<string, string>>;
}

/**
 * A minimal HTTP client for the fake's unit tests: `Authorization: Token …`, JSON in and out. Bodies are parsed
 * as JSON when they are JSON and otherwise left as text; the caller names the shape it expects.
 */
export class FakeApiClient {
  constructor(
    readonly baseUrl: string,
    readonly token: string | undefined,
  ) {}

  /** A client for the same fake with another token. */
  withToken(token: string): FakeApiClient {
    return new FakeApiClient(this.baseUrl, token);
  }

  async call<T = Record<string, unknown>>(
    method: string,
    path: string,
    options: CallOptions = {},
  ): Promise<ApiResponse<T>> {
    const headers: Record<string, string> = { ...options.headers };
    const token = options.token === undefined ? this.token : options.token;
    if (token !== null && token !== undefined) headers.Authorization = `Token ${token}`;
    let body: string | Uint8Array | undefined;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    } else if (options.gzipText !== undefined) {
      headers["Content-Type"] = "text/plain";
      headers["Content-Encoding"] = "gzip";
      body = gzipSync(Buffer.from(options.gzipText));
    }
    const res = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers,
      ...(body === undefined ? {} : { body }),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    let parsed: unknown = text;
    if ((res.headers.get("content-type") ?? "").includes("json")) parsed = JSON.parse(text);
    // The caller states the shape it expects; a wrong guess fails its assertions, which is the point of a test.
    return { status: res.status, headers: res.headers, body: parsed as T, text };
  }
}
