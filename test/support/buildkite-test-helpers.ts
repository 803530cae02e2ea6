import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import type { Logger } from "winston";
import { createLogger } from "../../operator/src/observability/logger.js";
import type { FakeClock } from "./fake-clock.js";

/** Test-only helpers for the Buildkite client tests: a scripted HTTP server, a captured logger, clock driving. */

/** A request as the server saw it; `path` is the raw, still-escaped path. */
export interface RecordedRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  rawBody: string;
  /** The body parsed as JSON, or undefined if empty or not JSON. */
  body: unknown;
}

/** What the server answers: `json` is serialised, `text` is sent as is. */
export interface ScriptedReply {
  status: number;
  json?: unknown;
  text?: string;
  headers?: Record<string, string>;
  /** Never answer (for timeouts). */
  hang?: boolean;
}

export type ReplyFn = (req: RecordedRequest) => ScriptedReply;

/**
 * A local HTTP server on 127.0.0.1 (random port) that records every request and answers from a script: queued
 * replies first, in order, then `handler`.
 */
export class ScriptedServer {
  readonly requests: RecordedRequest[] = [];
  handler: ReplyFn = () => ({ status: 500, json: { message: "no scripted reply" } });
  private readonly queued: ScriptedReply[] = [];
  private readonly server: Server;
  private port = 0;

  private constructor() {
    this.server = createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on("data", (c: Buffer) => parts.push(c));
      req.on("end", () => {
        const rawBody = Buffer.concat(parts).toString("utf8");
        const url = new URL(req.url ?? "/", "http://local");
        let body: unknown;
        try {
          body = rawBody === "" ? undefined : JSON.parse(rawBody);
        } catch {
          body = undefined;
        }
        const recorded: RecordedRequest = {
          method: req.method ?? "",
          path: (req.url ?? "/").split("?")[0] ?? "",
          query: url.searchParams,
          headers: req.headers,
          rawBody,
          body,
        };
        this.requests.push(recorded);
        const reply = this.queued.shift() ?? this.handler(recorded);
        if (reply.hang === true) return;
        const text = reply.text ?? (reply.json === undefined ? "" : JSON.stringify(reply.json));
        res.writeHead(reply.status, { "Content-Type": "application/json", ...reply.headers });
        res.end(text);
      });
    });
  }

  static async start(): Promise<ScriptedServer> {
    const s = new ScriptedServer();
    await new Promise<void>((resolve) => s.server.listen(0, "127.0.0.1", resolve));
    s.port = (s.server.address() as AddressInfo).port;
    return s;
  }

  /** The API base to give the client, e.g. `http://127.0.0.1:1234/v3`; still known after close. */
  get url(): string {
    return `http://127.0.0.1:${this.port}/v3`;
  }

  /** Queues replies for the next requests, in order. */
  reply(...replies: ScriptedReply[]): void {
    this.queued.push(...replies);
  }

  async close(): Promise<void> {
    // fetch keeps connections alive; close them or close() waits for their idle timeout.
    this.server.closeAllConnections();
    await new Promise<void>((resolve) =>
      this.server.close(() => {
        resolve();
      }),
    );
  }
}

/** A debug-level logger whose JSON lines land in `lines`. */
export function capturedLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(chunk.toString("utf8"));
      callback();
    },
  });
  return { logger: createLogger("debug", stream), lines };
}

/** Waits a real macrotask turn, so sockets and timers of the real event loop can progress. */
export function turn(ms = 0): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls (in real time) until `condition` holds; for waiting on I/O, never on the fake clock. */
export async function until(condition: () => boolean, what = "condition", timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await turn(1);
  }
}

/**
 * Awaits `promise` while driving `clock`: whenever a fake timer is pending (a retry delay), time moves on by
 * `stepMs`; in between, real I/O gets to run. Returns what `promise` settles to, or rethrows its rejection.
 */
export async function settle<T>(clock: FakeClock, promise: Promise<T>, stepMs = 250, timeoutMs = 10_000): Promise<T> {
  // An object, because TypeScript's narrowing cannot see the callback flip a plain boolean.
  const state = { done: false };
  const watched = promise.finally(() => {
    state.done = true;
  });
  // Observed below; this only stops the rejection from being reported as unhandled while the loop runs.
  watched.catch(() => undefined);
  const deadline = Date.now() + timeoutMs;
  while (!state.done) {
    if (Date.now() > deadline) throw new Error("promise did not settle");
    if (clock.pending > 0) clock.advance(stepMs);
    await turn(1);
  }
  return watched;
}

/** Awaits a promise expected to reject and returns the reason. */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection");
}
