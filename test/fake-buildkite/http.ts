import type { IncomingHttpHeaders } from "node:http";
import type { TokenClass } from "./model.js";

/**
 * A refusal with an HTTP status. Route handlers and store operations throw it; the server turns it into Buildkite's
 * error body `{"message": …}` (§1.4 "Errors"), plus any extra fields and headers.
 */
export class HttpError extends Error {
  override readonly name = "HttpError";

  constructor(
    readonly status: number,
    message: string,
    readonly headers: Readonly<Record<string, string>> = {},
    readonly extra: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
  }
}

/** A request as the handlers see it: path segments already URL-decoded, body already gunzipped. */
export interface FakeRequest {
  readonly method: string;
  /** The raw path, without the query string. */
  readonly path: string;
  /** The path split on `/` and URL-decoded (clients escape `.` as `%2E`, §1.4). */
  readonly segments: readonly string[];
  readonly query: URLSearchParams;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** What a handler answers. A `Buffer` or string body is sent as is; anything else as JSON. */
export interface Reply {
  readonly status: number;
  readonly body?: unknown;
  readonly headers?: Readonly<Record<string, string>>;
}

/** Path parameters captured by `:name` segments of a route pattern. */
export type Params = Readonly<Record<string, string>>;

/** A route: `pattern` like `/v3/stacks/:key/jobs/:uuid`, `name` used by faults and the request log. */
export interface Route<C> {
  readonly name: string;
  readonly method: string;
  readonly pattern: string;
  /** Token classes allowed; empty means the route is open (the fake's control API). */
  readonly auth: readonly TokenClass[];
  readonly handle: (ctx: C, params: Params) => Reply;
}

/** Splits and decodes a path; a malformed escape is the client's error. */
export function pathSegments(path: string): string[] {
  try {
    return path
      .split("/")
      .filter((s) => s.length > 0)
      .map((s) => decodeURIComponent(s));
  } catch (err) {
    throw new HttpError(400, `malformed path ${path}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Finds the first route whose method and pattern match. */
export function matchRoute<C>(
  routes: readonly Route<C>[],
  method: string,
  segments: readonly string[],
): { route: Route<C>; params: Params } | undefined {
  for (const route of routes) {
    if (route.method !== method) continue;
    const params = matchPattern(route.pattern, segments);
    if (params) return { route, params };
  }
  return undefined;
}

function matchPattern(pattern: string, segments: readonly string[]): Params | undefined {
  const parts = pattern.split("/").filter((s) => s.length > 0);
  if (parts.length !== segments.length) return undefined;
  const params: Record<string, string> = {};
  for (const [i, part] of parts.entries()) {
    const segment = segments[i] ?? "";
    if (part.startsWith(":")) params[part.slice(1)] = segment;
    else if (part !== segment) return undefined;
  }
  return params;
}

/** A path parameter the pattern guarantees; throws if a route and its handler disagree. */
export function param(params: Params, name: string): string {
  const value = params[name];
  if (value === undefined) throw new Error(`route has no :${name} parameter`);
  return value;
}

/** A JSON reply. */
export function json(status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): Reply {
  return { status, body, headers };
}

/** The body of a request that must be a JSON object; an empty body counts as `{}`. */
export function jsonObject(req: FakeRequest): Record<string, unknown> {
  if (req.body.length === 0) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(req.body.toString("utf8"));
  } catch {
    throw new HttpError(400, "request body is not valid JSON");
  }
  if (!isRecord(parsed)) throw new HttpError(400, "request body must be a JSON object");
  return parsed;
}

/** True for a plain JSON object. */
export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** An optional string field; a value of another type is a 422. */
export function optionalString(body: Record<string, unknown>, key: string): string | undefined {
  const value = body[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw new HttpError(422, `${key} must be a string`);
  return value;
}

/** An optional integer field; accepts a numeric string because the agent sends `exit_status` as one (§2.3). */
export function optionalInt(body: Record<string, unknown>, key: string): number | undefined {
  const value = body[key];
  if (value === undefined || value === null || value === "") return undefined;
  const n = typeof value === "string" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isInteger(n)) throw new HttpError(422, `${key} must be an integer`);
  return n;
}

/** A required array of strings of at most `max` items: 400 when missing or too long, as the Stacks API does. */
export function stringArray(body: Record<string, unknown>, key: string, max: number): string[] {
  const value = body[key];
  if (!Array.isArray(value) || !value.every((v): v is string => typeof v === "string")) {
    throw new HttpError(400, `${key} must be an array of strings`);
  }
  if (value.length > max) throw new HttpError(400, `${key} may hold at most ${max} items`);
  return value;
}

/** An optional map of strings. */
export function stringMap(body: Record<string, unknown>, key: string): Record<string, string> | undefined {
  const value = body[key];
  if (value === undefined || value === null) return undefined;
  if (!isRecord(value) || !Object.values(value).every((v) => typeof v === "string")) {
    throw new HttpError(422, `${key} must be an object of strings`);
  }
  return value as Record<string, string>;
}

/** RFC 3339 for a clock time in milliseconds. */
export function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** RFC 3339 for an optional clock time; Buildkite sends `null` for times that have not happened. */
export function isoOrNull(ms: number | undefined): string | null {
  return ms === undefined ? null : iso(ms);
}

/** Drops `undefined` fields, so optional properties end up absent rather than undefined (exactOptionalPropertyTypes). */
export function compact<T extends object>(fields: { [K in keyof T]-?: T[K] | undefined }): T {
  // Only undefined values are removed, so what remains has exactly T's declared value types.
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as T;
}
