import { compact, HttpError, isRecord, type Reply } from "./http.js";

/**
 * A fault to inject (`POST /_fake/faults` body, or `FakeBuildkite.injectFault`): the next `count` requests to
 * `route` are delayed and/or answered with `status` instead of being handled. Route names are those in the request
 * log (`stacks.scheduled-jobs`, `agent.acquire`, …); `*` matches every API route.
 */
export interface FaultSpec {
  readonly route: string;
  /** The status to answer with; omit to only add latency. */
  readonly status?: number;
  /** How many matching requests the fault affects (default 1). */
  readonly count?: number;
  /** Seconds for a `Retry-After` header. */
  readonly retry_after?: number;
  /** Latency added before answering (or before normal handling, without `status`). */
  readonly delay_ms?: number;
  /**
   * The body: a string is sent as is with `text/html` (an undecodable body, which the agent retries), anything else
   * as JSON. Default `{"message": "injected fault"}`.
   */
  readonly body?: unknown;
}

/** A fault taken for one request. */
export interface TakenFault {
  readonly delayMs: number;
  /** The reply to send instead of handling the request, if the fault has a status. */
  readonly reply: Reply | undefined;
}

interface Armed {
  readonly spec: FaultSpec;
  remaining: number;
}

/** Pending injected faults, consumed in the order they were added. */
export class Faults {
  readonly #armed: Armed[] = [];

  /** Arms a fault after checking it, so a typo fails the test that wrote it rather than silently never firing. */
  add(spec: FaultSpec): void {
    if (spec.route === "") throw new HttpError(422, "route is required");
    const count = spec.count ?? 1;
    if (!Number.isInteger(count) || count < 1) throw new HttpError(422, "count must be a positive integer");
    if (spec.status !== undefined && (!Number.isInteger(spec.status) || spec.status < 100 || spec.status > 599)) {
      throw new HttpError(422, "status must be an HTTP status code");
    }
    if (spec.status === undefined && spec.delay_ms === undefined)
      throw new HttpError(422, "a fault needs a status or delay_ms");
    this.#armed.push({ spec, remaining: count });
  }

  clear(): void {
    this.#armed.length = 0;
  }

  /** Faults still armed, with how many requests each will still affect. */
  pending(): (FaultSpec & { readonly remaining: number })[] {
    return this.#armed.map((a) => ({ ...a.spec, remaining: a.remaining }));
  }

  /** Consumes one use of the first fault armed for `route`. */
  take(route: string): TakenFault | undefined {
    const index = this.#armed.findIndex((a) => a.spec.route === route || a.spec.route === "*");
    const armed = this.#armed[index];
    if (!armed) return undefined;
    armed.remaining -= 1;
    if (armed.remaining === 0) this.#armed.splice(index, 1);
    const { spec } = armed;
    const headers: Record<string, string> =
      spec.retry_after === undefined ? {} : { "Retry-After": String(spec.retry_after) };
    const body = spec.body ?? { message: "injected fault" };
    if (typeof body === "string") headers["Content-Type"] = "text/html; charset=utf-8";
    return {
      delayMs: spec.delay_ms ?? 0,
      reply: spec.status === undefined ? undefined : { status: spec.status, body, headers },
    };
  }
}

/** Reads a fault from a control API body. */
export function parseFault(body: Record<string, unknown>): FaultSpec {
  const route = body.route;
  if (typeof route !== "string") throw new HttpError(422, "route must be a string");
  const num = (name: string): number | undefined => {
    const value = body[name];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0)
      throw new HttpError(422, `${name} must be a number ≥ 0`);
    return value;
  };
  const raw = body.body;
  if (raw !== undefined && raw !== null && typeof raw !== "string" && !isRecord(raw)) {
    throw new HttpError(422, "body must be a string or an object");
  }
  return compact<FaultSpec>({
    route,
    status: num("status"),
    count: num("count"),
    retry_after: num("retry_after"),
    delay_ms: num("delay_ms"),
    body: raw ?? undefined,
  });
}
