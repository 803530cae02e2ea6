import { backoffDelayMs } from "../kube/backoff.js";
import { performance } from "node:perf_hooks";
import type { Logger } from "winston";
import type { Clock } from "../kube/clock.js";
import { ShapeError } from "./decode.js";
import { BuildkiteApiError } from "./errors.js";
import type { EndpointScope } from "./types.js";

/** One finished attempt, for metrics: `status` is `"error"` when no complete response arrived. */
export interface RequestReport {
  endpoint: EndpointScope;
  status: number | "error";
  durationMs: number;
}

/** Settings of {@link Transport}; see `StacksClientOptions` for their meaning. */
export interface TransportOptions {
  endpoint: string;
  token: string;
  clock: Clock;
  logger: Logger;
  userAgent: string;
  maxAttempts: number;
  timeoutMs: number;
  onRequest?: ((r: RequestReport) => void) | undefined;
}

/** One call, with its path relative to the API base and already escaped. */
export interface RequestSpec {
  endpoint: EndpointScope;
  method: "GET" | "POST" | "PUT";
  path: string;
  query?: URLSearchParams;
  body?: unknown;
}

/** Backoff without `Retry-After`: 1 s doubling per attempt, capped (as Buildkite's `stacksapi` client does). */
const BASE_DELAY_MS = 1000;
const MAX_BACKOFF_MS = 30_000;
/** A `Retry-After` beyond this is clamped, so one odd header cannot stall a poll loop for hours. */
const MAX_RETRY_AFTER_MS = 60_000;
/** Error bodies from proxies can be whole HTML pages; keep enough to recognise them. */
const MAX_SERVER_MESSAGE = 300;

/** Resolves after `ms` on the given clock; with a `FakeClock` only when the test advances it. */
export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimer(ms, resolve));
}

/**
 * `Retry-After` in milliseconds. Buildkite sends seconds; like `stacksapi` this accepts decimals and a trailing `s`
 * and ignores the HTTP-date form (undefined then, so backoff applies).
 */
export function parseRetryAfterMs(value: string | null): number | undefined {
  const match = value === null ? null : /^\s*(\d+(?:\.\d+)?)s?\s*$/.exec(value);
  if (match?.[1] === undefined) return undefined;
  return Math.min(MAX_RETRY_AFTER_MS, Math.round(Number(match[1]) * 1000));
}

/** Delay before attempt `attempt + 1`: `Retry-After` if given, else capped exponential backoff with jitter 0.5–1. */
export function retryDelayMs(
  attempt: number,
  retryAfterMs: number | undefined,
  random: () => number = Math.random,
): number {
  if (retryAfterMs !== undefined) return retryAfterMs;
  // Jitter keeps many stacks that failed together from retrying in lockstep.
  return backoffDelayMs(attempt, BASE_DELAY_MS, MAX_BACKOFF_MS) * (0.5 + random() / 2);
}

type Outcome<T> = { ok: true; value: T } | { ok: false; error: BuildkiteApiError; retryAfterMs?: number | undefined };

/**
 * HTTP for the Stacks API: auth and JSON headers, a per-attempt timeout, retries of 429/5xx/network failures, one
 * metrics report per attempt. Every string that leaves it (errors, logs) passes through {@link Transport.redact},
 * because servers and proxies have been known to echo request headers back.
 */
export class Transport {
  private readonly base: string;

  constructor(private readonly options: TransportOptions) {
    this.base = options.endpoint.replace(/\/+$/, "");
  }

  /** Sends a request whose 2xx body must be JSON accepted by `decode`, which throws a `ShapeError` if it is not. */
  json<T>(spec: RequestSpec, decode: (body: unknown) => T): Promise<T> {
    return this.send(spec, (text, status) => {
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch (err) {
        // A 2xx that is not JSON is usually a proxy or a half-deployed server: worth another try.
        throw this.invalid(spec.endpoint, status, "response body is not JSON", err);
      }
      try {
        return decode(body);
      } catch (err) {
        // Retryable like a body that is not JSON. A non-retryable error would read as a refusal to callers: job tokens
        // would fall back to the agent token, a registration would be "Rejected", on a body nobody refused anything in.
        if (err instanceof ShapeError)
          throw this.invalid(spec.endpoint, status, `response body has an unexpected shape: ${err.message}`, err);
        throw err;
      }
    });
  }

  /** Sends a request whose 2xx body is not needed. */
  async empty(spec: RequestSpec): Promise<void> {
    await this.send(spec, () => undefined);
  }

  /** Replaces the token wherever it appears. */
  redact(text: string): string {
    return this.options.token === "" ? text : text.split(this.options.token).join("[redacted]");
  }

  private async send<T>(spec: RequestSpec, decode: (text: string, status: number) => T): Promise<T> {
    const { maxAttempts, clock, logger } = this.options;
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.attempt(spec, decode);
      if (outcome.ok) return outcome.value;
      const { error } = outcome;
      if (!error.retryable || attempt >= maxAttempts) throw error;
      const delayMs = retryDelayMs(attempt, outcome.retryAfterMs);
      logger.warn("Deferred a retry of a failed Buildkite request", {
        endpoint: spec.endpoint,
        status: error.status,
        attempt,
        maxAttempts,
        delayMs: Math.round(delayMs),
        error: error.message,
      });
      await sleep(clock, delayMs);
    }
  }

  private async attempt<T>(spec: RequestSpec, decode: (text: string, status: number) => T): Promise<Outcome<T>> {
    const started = performance.now();
    let status: number | "error" = "error";
    try {
      const res = await fetch(this.url(spec), {
        method: spec.method,
        headers: this.headers(),
        // Some servers reject a body on GET, so only send one when there is something to send.
        ...(spec.body === undefined ? {} : { body: JSON.stringify(spec.body) }),
        signal: AbortSignal.timeout(this.options.timeoutMs),
      });
      // The timeout also covers reading the body, so a stalled stream fails this attempt too.
      const text = await res.text();
      status = res.status;
      if (!res.ok) {
        const error = new BuildkiteApiError({
          endpoint: spec.endpoint,
          status: res.status,
          serverMessage: this.serverMessage(text),
        });
        return { ok: false, error, retryAfterMs: parseRetryAfterMs(res.headers.get("retry-after")) };
      }
      return { ok: true, value: decode(text, res.status) };
    } catch (err) {
      // decode throws BuildkiteApiError for unusable bodies; anything else means no usable response arrived.
      return { ok: false, error: err instanceof BuildkiteApiError ? err : this.networkError(spec.endpoint, err) };
    } finally {
      // Wall time from performance.now(), not the injected clock: a FakeClock does not move during real I/O.
      this.report({ endpoint: spec.endpoint, status, durationMs: performance.now() - started });
    }
  }

  private url(spec: RequestSpec): string {
    const query = spec.query?.toString() ?? "";
    return `${this.base}/${spec.path}${query === "" ? "" : `?${query}`}`;
  }

  private headers(): Record<string, string> {
    return {
      Authorization: `Token ${this.options.token}`,
      Accept: "application/json",
      "Content-Type": "application/json",
      "User-Agent": this.options.userAgent,
    };
  }

  /** Buildkite's error body is `{"message": …}`; anything else is kept as (cropped) text. */
  private serverMessage(text: string): string | undefined {
    let message: string = text;
    try {
      const body: unknown = JSON.parse(text);
      if (typeof body === "object" && body !== null && "message" in body && typeof body.message === "string")
        message = body.message;
    } catch {
      // Not JSON (an HTML error page from a proxy, say): the raw text is the best description there is.
    }
    message = this.redact(message.trim());
    if (message === "") return undefined;
    return message.length > MAX_SERVER_MESSAGE ? `${message.slice(0, MAX_SERVER_MESSAGE)}…` : message;
  }

  private invalid(endpoint: EndpointScope, status: number, reason: string, cause?: unknown): BuildkiteApiError {
    return new BuildkiteApiError({ endpoint, status, reason, retryable: true, cause });
  }

  private networkError(endpoint: EndpointScope, err: unknown): BuildkiteApiError {
    const timedOut = err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError");
    const reason = timedOut
      ? `timed out after ${this.options.timeoutMs} ms`
      : this.redact(err instanceof Error ? err.message : String(err));
    return new BuildkiteApiError({ endpoint, reason, retryable: true, cause: err });
  }

  private report(r: RequestReport): void {
    try {
      this.options.onRequest?.(r);
    } catch (err) {
      // A broken metrics hook must not fail API calls.
      this.options.logger.warn("Ignored an error from the request metrics hook", { error: String(err) });
    }
  }
}
