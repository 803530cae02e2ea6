import type { IncomingHttpHeaders } from "node:http";
import type { TokenClass } from "./model.js";

/**
 * One API request as the fake saw it, for assertions such as "the agent acquired with the lock header". It names
 * the class of token used, never the token: headers that carry credentials are left out.
 */
export interface RequestLogEntry {
  readonly seq: number;
  /** When the request arrived, by the fake's clock (RFC 3339). */
  readonly at: string;
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  /** The matched route's name (e.g. `agent.acquire`), or null when no route matched (404 "not implemented"). */
  readonly route: string | null;
  readonly token_class: TokenClass;
  /** Request headers, lower-case, without Authorization or cookies. */
  readonly headers: Readonly<Record<string, string>>;
  /** The JSON body, if the request had one; other bodies (log chunks) are omitted. */
  readonly body: unknown;
  readonly status: number;
}

const SECRET_HEADERS = new Set(["authorization", "proxy-authorization", "cookie"]);

/** Headers safe to keep: everything except credentials. */
export function loggableHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || SECRET_HEADERS.has(name)) continue;
    out[name] = Array.isArray(value) ? value.join(", ") : value;
  }
  return out;
}

/** A JSON body for the log, or null for bodies that are not JSON. */
export function loggableBody(body: Buffer, contentType: string | undefined): unknown {
  if (body.length === 0 || !(contentType ?? "").includes("json")) return null;
  try {
    return JSON.parse(body.toString("utf8"));
  } catch {
    return null;
  }
}

/** The request log, bounded so a long benchmark run cannot grow it without limit (oldest entries drop first). */
export class RequestLog {
  readonly #entries: RequestLogEntry[] = [];
  readonly #max: number;
  #seq = 0;

  constructor(max = 100_000) {
    this.#max = max;
  }

  add(entry: Omit<RequestLogEntry, "seq">): void {
    this.#seq += 1;
    this.#entries.push({ seq: this.#seq, ...entry });
    if (this.#entries.length > this.#max) this.#entries.splice(0, this.#entries.length - this.#max);
  }

  entries(): RequestLogEntry[] {
    return [...this.#entries];
  }

  clear(): void {
    this.#entries.length = 0;
  }
}
