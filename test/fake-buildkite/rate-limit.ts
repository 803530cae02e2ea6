import { HttpError } from "./http.js";

/** A documented Stacks API rate-limit scope and its limit in requests per second. */
export interface RateScope {
  readonly scope: string;
  readonly limit: number;
}

/** The documented per-endpoint limits (§1.4 "Rate limits"), by route name. Register and JAT issuance have none. */
export const RATE_SCOPES: Readonly<Record<string, RateScope>> = {
  "stacks.scheduled-jobs": { scope: "list-scheduled-jobs", limit: 10 },
  "stacks.batch-reserve": { scope: "batch-reserve", limit: 10 },
  "stacks.job": { scope: "show-job", limit: 1000 },
  "stacks.get-states": { scope: "batch-load-job-states", limit: 20 },
  "stacks.finish": { scope: "finish-job", limit: 100 },
  "stacks.notifications": { scope: "stack-notification", limit: 200 },
  "stacks.deregister": { scope: "default", limit: 10 },
};

const WINDOW_MS = 1000;

/** The outcome of counting one request: headers to send, and the 429 to answer with when it is over the limit. */
export interface RateDecision {
  readonly headers: Readonly<Record<string, string>>;
  readonly rejection: HttpError | undefined;
}

/**
 * Buildkite's Stacks API limiter: per (stack, scope), a 1-second sliding window. The `RateLimit-*` headers are sent
 * whether or not limiting is on, as Buildkite always sends them; only rejection is switchable, so tests that do not
 * study rate limits are not slowed by them. Time comes from the injected clock.
 */
export class RateLimiter {
  enabled: boolean;
  readonly #clock: () => number;
  readonly #windows = new Map<string, number[]>();

  constructor(clock: () => number, enabled: boolean) {
    this.#clock = clock;
    this.enabled = enabled;
  }

  /** Counts a request to `route` by `stackKey`; undefined when the route has no documented limit. */
  check(route: string, stackKey: string): RateDecision | undefined {
    const rate = RATE_SCOPES[route];
    if (!rate) return undefined;
    const now = this.#clock();
    const key = `${stackKey}\u0000${rate.scope}`;
    const window = (this.#windows.get(key) ?? []).filter((t) => t > now - WINDOW_MS);
    this.#windows.set(key, window);
    const over = this.enabled && window.length >= rate.limit;
    // A refused request is not counted, so a client that waits Retry-After seconds gets a fresh window.
    if (!over) window.push(now);
    const oldest = window[0] ?? now;
    const reset = Math.max(1, Math.ceil((oldest + WINDOW_MS - now) / 1000));
    const headers = {
      "RateLimit-Scope": rate.scope,
      "RateLimit-Limit": String(rate.limit),
      "RateLimit-Remaining": String(Math.max(0, rate.limit - window.length)),
      "RateLimit-Reset": String(reset),
    };
    if (!over) return { headers, rejection: undefined };
    const rejection = new HttpError(
      429,
      `You have exceeded your API rate limit. Please wait ${reset} seconds before making more requests.`,
      // The body says how long to wait; clients (stacksapi, the agent) read Retry-After, so send both (§6.3).
      { ...headers, "Retry-After": String(reset) },
      { scope: rate.scope, limit: rate.limit, current: window.length + 1, reset },
    );
    return { headers, rejection };
  }
}
