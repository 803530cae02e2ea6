import type { EndpointScope } from "./types.js";

/**
 * Whether a failed HTTP status is worth retrying. Buildkite's own client retries only 429 (rate limited) and 5xx
 * (503 = "organization temporarily unavailable"); every other 4xx is a mistake the same request will repeat (§1.4).
 */
export function isRetryableStatus(status: number): boolean {
  return status === 429 || status >= 500;
}

/** What went wrong, for {@link BuildkiteApiError}'s constructor. */
export interface BuildkiteApiErrorInit {
  endpoint: EndpointScope;
  /** HTTP status; absent when no response arrived (network error, timeout). */
  status?: number;
  /** The server's `{"message": …}`, already free of secrets. */
  serverMessage?: string | undefined;
  /** Set for failures that are not an HTTP status (no response, unreadable body); otherwise derived from `status`. */
  retryable?: boolean;
  /** Why, when there is no server message (e.g. "timed out after 15000 ms"). */
  reason?: string;
  cause?: unknown;
}

/**
 * A failed Stacks API call. Callers branch on `status` and `retryable`, never on the message text. The message names
 * the endpoint and status but never the token: it ends up in logs and Kubernetes events.
 */
export class BuildkiteApiError extends Error {
  override readonly name = "BuildkiteApiError";
  /** Rate-limit scope of the call, e.g. `list-scheduled-jobs`. */
  readonly endpoint: EndpointScope;
  /** HTTP status, or undefined when no response arrived. */
  readonly status: number | undefined;
  /** Whether trying the same request later may succeed. */
  readonly retryable: boolean;
  /** The `message` of Buildkite's error body, if it sent one. */
  readonly serverMessage: string | undefined;

  constructor(init: BuildkiteApiErrorInit) {
    const what = init.status === undefined ? "failed" : `failed with HTTP ${init.status}`;
    const why = init.serverMessage ?? init.reason;
    super(
      `Buildkite ${init.endpoint} ${what}${why === undefined || why === "" ? "" : `: ${why}`}`,
      init.cause === undefined ? undefined : { cause: init.cause },
    );
    this.endpoint = init.endpoint;
    this.status = init.status;
    this.serverMessage = init.serverMessage;
    this.retryable = init.retryable ?? (init.status !== undefined && isRetryableStatus(init.status));
  }
}
