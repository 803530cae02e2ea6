import type { Logger } from "winston";
import type { Clock } from "../kube/clock.js";
import {
  decodeIdentity,
  decodeJob,
  decodeJobTokens,
  decodeNotifications,
  decodeReserve,
  decodeScheduledJobsPage,
  decodeStack,
  decodeStates,
} from "./decode.js";
import { Transport, type RequestReport } from "./transport.js";
import {
  isJobState,
  type JobDetails,
  type JobState,
  type ScheduledJob,
  type Stack,
  type StackNotification,
  type TokenIdentity,
} from "./types.js";

export { stackKey, type StackKeyParts } from "./stack-key.js";

/** Sent unless `userAgent` is given; `main.ts` may pass the build's own version. */
export const DEFAULT_USER_AGENT = "buildkite-operator/0.1.0";
/** Most uuids or notifications one call accepts (§1.4 S4, S6, S8); more is a 400. */
export const MAX_BATCH = 1000;
/** `finish` rejects a detail over 4 KB (§1.4 S7). */
export const MAX_FINISH_DETAIL_BYTES = 4096;
/** Notifications allow 256 characters; crop to 255 as agent-stack-k8s does, leaving room for counting differences. */
export const MAX_NOTIFICATION_DETAIL = 255;

/** How to reach the Stacks API and how hard to try. */
export interface StacksClientOptions {
  /** API base, e.g. `https://agent.buildkite.com/v3`. */
  endpoint: string;
  /** A cluster agent token (`bkct_…`). Never logged. */
  token: string;
  /** Drives retry delays, so tests can use a `FakeClock`. */
  clock: Clock;
  logger: Logger;
  userAgent?: string;
  /** Attempts per call, including the first (default 5, as Buildkite's Go client). */
  maxAttempts?: number;
  /** Per attempt, including reading the body (default 15000). */
  timeoutMs?: number;
  /** Called once per attempt; the hook for request metrics. */
  onRequest?: (r: RequestReport) => void;
}

/** Escapes one path segment; Rails rejects dots in some segments, so `.` becomes `%2E` too (§1.4). */
export function escapeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(/\./g, "%2E");
}

/** Crops to at most `maxBytes` of UTF-8 without splitting a character. */
export function cropUtf8(text: string, maxBytes: number): string {
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= maxBytes) return text;
  let end = maxBytes;
  // Step back over continuation bytes (10xxxxxx) to the start of the character that would be cut.
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end).toString("utf8");
}

/**
 * Crops to at most `max` UTF-16 units without splitting a surrogate pair. Rails counts code points and JavaScript
 * counts UTF-16 units; staying within `max` of the larger count satisfies either reading of the limit.
 */
export function cropChars(text: string, max: number): string {
  if (text.length <= max) return text;
  let out = "";
  for (const ch of text) {
    if (out.length + ch.length > max) break;
    out += ch;
  }
  return out;
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/**
 * The Buildkite Stacks API (reference §1.4): register a stack, list and reserve scheduled jobs, read their details
 * and states, fail the ones that cannot run, and post timeline notifications. Calls retry 429, 5xx and network
 * failures (see {@link Transport}) and throw `BuildkiteApiError` otherwise. Batches larger than the API accepts are
 * split and sent one after another, since each endpoint is rate-limited per stack.
 */
export class StacksClient {
  private readonly http: Transport;
  private readonly logger: Logger;

  constructor(options: StacksClientOptions) {
    this.logger = options.logger;
    this.http = new Transport({
      endpoint: options.endpoint,
      token: options.token,
      clock: options.clock,
      logger: options.logger,
      userAgent: options.userAgent ?? DEFAULT_USER_AGENT,
      maxAttempts: Math.max(1, options.maxAttempts ?? 5),
      timeoutMs: options.timeoutMs ?? 15_000,
      onRequest: options.onRequest,
    });
  }

  /** `GET /token`: the token's organisation and cluster. An empty `cluster_uuid` means an unclustered token. */
  identity(): Promise<TokenIdentity> {
    return this.http.json({ endpoint: "token", method: "GET", path: "token" }, decodeIdentity);
  }

  /** `POST /stacks/register` as a `custom` stack (`kubernetes` is reserved for agent-stack-k8s). Idempotent. */
  async register(key: string, queueKey: string, metadata: Record<string, string> = {}): Promise<Stack> {
    const stack = await this.http.json(
      {
        endpoint: "register",
        method: "POST",
        path: "stacks/register",
        body: { key, type: "custom", queue_key: queueKey, metadata },
      },
      decodeStack,
    );
    this.logger.info("Registered Buildkite stack", { stack: key, queue: stack.cluster_queue_key });
    return stack;
  }

  /** `POST /stacks/{key}/deregister`: frees one of the organisation's stack slots on shutdown. */
  async deregister(key: string): Promise<void> {
    await this.http.empty({ endpoint: "deregister", method: "POST", path: `stacks/${escapeSegment(key)}/deregister` });
    this.logger.info("Deregistered Buildkite stack", { stack: key });
  }

  /**
   * `GET /stacks/{key}/scheduled-jobs`, oldest first, following `end_cursor` for up to `maxPages` pages (default 2,
   * as the docs advise: later pages are not a snapshot and reserving early beats reading far). `paused` is true if
   * the queue is paused under either flag name; then the stack must not start jobs, so no further page is read.
   */
  async scheduledJobs(
    key: string,
    queueKey: string,
    opts: { limit?: number; maxPages?: number } = {},
  ): Promise<{ jobs: ScheduledJob[]; paused: boolean }> {
    const limit = Math.min(MAX_BATCH, opts.limit ?? MAX_BATCH);
    const maxPages = opts.maxPages ?? 2;
    const jobs: ScheduledJob[] = [];
    let after: string | null = null;
    for (let page = 0; page < maxPages; page++) {
      const query = new URLSearchParams({ queue_key: queueKey, limit: String(limit) });
      if (after !== null) query.set("after", after);
      const body = await this.http.json(
        {
          endpoint: "list-scheduled-jobs",
          method: "GET",
          path: `stacks/${escapeSegment(key)}/scheduled-jobs`,
          query,
        },
        decodeScheduledJobsPage,
      );
      jobs.push(...body.jobs);
      if (body.cluster_queue.paused === true || body.cluster_queue.dispatch_paused === true)
        return { jobs, paused: true };
      after = body.page_info.end_cursor;
      if (!body.page_info.has_next_page || after === null) break;
    }
    return { jobs, paused: false };
  }

  /**
   * `PUT /stacks/{key}/scheduled-jobs/batch-reserve` in chunks of 1000. Only jobs in `reserved` may be run; reserving
   * a job again extends its reservation. Without `expirySeconds` the server's default (900 s) applies.
   */
  async reserve(
    key: string,
    uuids: string[],
    expirySeconds?: number,
  ): Promise<{ reserved: string[]; notReserved: string[] }> {
    const reserved: string[] = [];
    const notReserved: string[] = [];
    for (const batch of chunks(uuids, MAX_BATCH)) {
      const body = await this.http.json(
        {
          endpoint: "batch-reserve",
          method: "PUT",
          path: `stacks/${escapeSegment(key)}/scheduled-jobs/batch-reserve`,
          body: {
            job_uuids: batch,
            ...(expirySeconds === undefined ? {} : { reservation_expiry_seconds: expirySeconds }),
          },
        },
        decodeReserve,
      );
      reserved.push(...body.reserved);
      notReserved.push(...body.not_reserved);
    }
    return { reserved, notReserved };
  }

  /** `GET /stacks/{key}/jobs/{uuid}`: the env and command an agent will run; works on reserved jobs. */
  getJob(key: string, uuid: string): Promise<JobDetails> {
    return this.http.json(
      {
        endpoint: "show-job",
        method: "GET",
        path: `stacks/${escapeSegment(key)}/jobs/${escapeSegment(uuid)}`,
      },
      decodeJob,
    );
  }

  /**
   * `POST /stacks/{key}/jobs/get-states` in chunks of 1000. Uuids the server does not know are absent from the map,
   * and so are states this client does not know (logged): callers already handle absence, while an unknown string
   * typed as a known state would mislead their exhaustive switches.
   */
  async getStates(key: string, uuids: string[]): Promise<Map<string, JobState>> {
    const states = new Map<string, JobState>();
    for (const batch of chunks(uuids, MAX_BATCH)) {
      const body = await this.http.json(
        {
          endpoint: "batch-load-job-states",
          method: "POST",
          path: `stacks/${escapeSegment(key)}/jobs/get-states`,
          body: { job_uuids: batch },
        },
        decodeStates,
      );
      for (const [uuid, state] of Object.entries(body.states)) {
        if (isJobState(state)) states.set(uuid, state);
        else this.logger.warn("Ignored an unknown Buildkite job state", { job: uuid, state });
      }
    }
    return states;
  }

  /**
   * `POST /stacks/{key}/jobs/{uuid}/finish`: fails a job the stack cannot run. `exit_status` is always sent, -1 by
   * default, because Go's `omitempty` taught servers to read a missing one as -1 and 0 would mean success.
   */
  async finish(key: string, uuid: string, detail: string, exitStatus = -1): Promise<void> {
    await this.http.empty({
      endpoint: "finish-job",
      method: "POST",
      path: `stacks/${escapeSegment(key)}/jobs/${escapeSegment(uuid)}/finish`,
      body: { exit_status: exitStatus, detail: cropUtf8(detail, MAX_FINISH_DETAIL_BYTES) },
    });
  }

  /**
   * `POST /stacks/{key}/job-acquisition-tokens` in chunks of 1000 (§1.4 S9): a token per reserved job that can acquire
   * only that job. Jobs in `notIssued` must not be started with a job token. Tokens are secrets: never logged.
   */
  async issueJobTokens(
    key: string,
    uuids: string[],
    lifetimeSeconds?: number,
  ): Promise<{ tokens: Map<string, { token: string; expiresAt: string }>; notIssued: string[] }> {
    const tokens = new Map<string, { token: string; expiresAt: string }>();
    const notIssued: string[] = [];
    for (const batch of chunks(uuids, MAX_BATCH)) {
      const body = await this.http.json(
        {
          endpoint: "job-acquisition-tokens",
          method: "POST",
          path: `stacks/${escapeSegment(key)}/job-acquisition-tokens`,
          body: {
            job_uuids: batch,
            ...(lifetimeSeconds === undefined ? {} : { token_lifetime_seconds: lifetimeSeconds }),
          },
        },
        decodeJobTokens,
      );
      for (const t of body.job_acquisition_tokens)
        tokens.set(t.job_uuid, { token: t.job_acquisition_token, expiresAt: t.expires_at });
      notIssued.push(...body.not_issued);
    }
    return { tokens, notIssued };
  }

  /**
   * `POST /stacks/{key}/notifications` in chunks of 1000, details cropped to 255 characters. Partial success: the
   * returned errors' indexes point into `items` (not into a chunk).
   */
  async notify(
    key: string,
    items: { jobUuid: string; detail: string; timestamp?: Date }[],
  ): Promise<{ errors: { error: string; indexes: number[] }[] }> {
    const errors: { error: string; indexes: number[] }[] = [];
    for (let offset = 0; offset < items.length; offset += MAX_BATCH) {
      const notifications = items.slice(offset, offset + MAX_BATCH).map((item): StackNotification => ({
        job_uuid: item.jobUuid,
        detail: cropChars(item.detail, MAX_NOTIFICATION_DETAIL),
        ...(item.timestamp === undefined ? {} : { timestamp: item.timestamp.toISOString() }),
      }));
      const body = await this.http.json(
        {
          endpoint: "stack-notification",
          method: "POST",
          path: `stacks/${escapeSegment(key)}/notifications`,
          body: { notifications },
        },
        decodeNotifications,
      );
      for (const e of body.errors) errors.push({ error: e.error, indexes: e.indexes.map((i) => i + offset) });
    }
    return { errors };
  }
}
