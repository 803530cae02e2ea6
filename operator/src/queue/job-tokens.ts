import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { BuildkiteApiError } from "../buildkite/errors.js";
import type { StacksClient } from "../buildkite/stacks-client.js";
import { isTerminal } from "../job/phase.js";
import type { ControllerContext } from "../kube/controller.js";
import { writeTokenSecret } from "./source-support.js";

/** The queue's registered stack, as far as tokens go. */
interface Stack {
  client: Pick<StacksClient, "issueJobTokens">;
  key: string;
}

/** Asked-for lifetime of job acquisition tokens; Buildkite cuts it short when the reservation ends. */
const JOB_TOKEN_LIFETIME_SECONDS = 3600;
/** After Buildkite refuses job tokens to a Preferred queue (whose pods then use the agent token), when to ask again. */
const JOB_TOKEN_RETRY_MS = 600_000;

/**
 * The job acquisition tokens of one queue's jobs: whether Buildkite issues them, the tokens of reserved jobs (written
 * to Secrets owned by their BuildkiteJobs), and the jobs still waiting for theirs. By default (`jobTokens: Required`)
 * a job pod only ever gets its own job's token; the cluster agent token reaches a pod only where the queue opted in.
 */
export class JobTokens {
  /** Until when job tokens count as refused (after Buildkite refused to issue them). */
  private refusedUntilMs = -Infinity;
  /** Whether Buildkite issued (or offered to issue) job tokens since the last refusal. */
  private work = false;
  /** Reserved jobs with a BuildkiteJob whose token Buildkite has not issued yet: asked for again every cycle. */
  private readonly waiting = new Set<string>();

  constructor(
    private readonly ctx: Pick<ControllerContext, "clock" | "clients">,
    /** With `Required`, how soon after a refusal Buildkite is asked again. */
    private readonly probeMs: number,
    private readonly setCondition: (update: ConditionUpdate, queue: BuildkiteQueue) => void,
  ) {}

  /** The unfinished jobs still waiting for a token; forgets those gone (unless `young`: created, not yet cached). */
  awaiting(jobs: readonly BuildkiteJob[], young: (uuid: string) => boolean): BuildkiteJob[] {
    if (this.waiting.size === 0) return [];
    const waiting = jobs.filter((j) => this.waiting.has(j.spec.uuid) && !isTerminal(j.status?.phase));
    const live = new Set(waiting.map((j) => j.spec.uuid));
    for (const uuid of this.waiting) if (!live.has(uuid) && !young(uuid)) this.waiting.delete(uuid);
    return waiting;
  }

  /** Writes a job's token Secret, or remembers that the job still waits for its token. */
  async store(job: BuildkiteJob, token: string | undefined): Promise<void> {
    if (token === undefined) {
      this.waiting.add(job.spec.uuid);
      return;
    }
    await writeTokenSecret(this.ctx.clients, job, token);
    this.waiting.delete(job.spec.uuid);
  }

  /**
   * How the pods of jobs taken now get their token, decided before they are reserved: `job` (each its own job
   * acquisition token), `agent` (the queue's cluster agent token: the queue opted in with Disabled, or Preferred while
   * Buildkite refuses job tokens) or `none` (Required while Buildkite refuses them: take nothing). With `Required`
   * and nothing known yet, a probe asks for the token of one listed (not yet reserved) job, which Buildkite answers
   * with `not_issued` when it supports job tokens, and with an error when it does not.
   */
  async modeFor(queue: BuildkiteQueue, conn: Stack, candidate: string): Promise<"job" | "agent" | "none"> {
    const mode = queue.spec.jobTokens;
    if (mode === "Disabled") {
      this.setCondition(
        {
          type: "JobTokens",
          status: "False",
          reason: "Disabled",
          message: "spec.jobTokens is Disabled: job pods get the queue's cluster agent token (an explicit opt-in).",
        },
        queue,
      );
      return "agent";
    }
    if (this.work) return "job";
    if (this.ctx.clock.nowMs() < this.refusedUntilMs) return mode === "Preferred" ? "agent" : "none";
    try {
      await conn.client.issueJobTokens(conn.key, [candidate], JOB_TOKEN_LIFETIME_SECONDS);
      this.work = true;
      return "job";
    } catch (err) {
      if (!(err instanceof BuildkiteApiError) || err.retryable) throw err;
      this.refuse(queue, err);
      return mode === "Preferred" ? "agent" : "none";
    }
  }

  /**
   * Job acquisition tokens for reserved jobs, each able to acquire only its own job. A job Buildkite did not issue a
   * token for is absent from the answer and waits (see {@link store}); it never switches the queue to the agent token.
   */
  async issue(queue: BuildkiteQueue, conn: Stack, uuids: string[]): Promise<Map<string, string>> {
    if (uuids.length === 0 || this.ctx.clock.nowMs() < this.refusedUntilMs) return new Map();
    try {
      const issued = await conn.client.issueJobTokens(conn.key, uuids, JOB_TOKEN_LIFETIME_SECONDS);
      this.work = true;
      this.setCondition(
        {
          type: "JobTokens",
          status: "True",
          reason: "Issued",
          message: "Each job pod gets a job acquisition token that can acquire its one job only.",
        },
        queue,
      );
      return new Map([...issued.tokens].map(([uuid, t]) => [uuid, t.token]));
    } catch (err) {
      if (!(err instanceof BuildkiteApiError) || err.retryable) throw err;
      this.refuse(queue, err);
      return new Map();
    }
  }

  /** Buildkite refused to issue job tokens: the queue says what that means for its jobs, and asks again later. */
  private refuse(queue: BuildkiteQueue, err: BuildkiteApiError): void {
    this.work = false;
    const preferred = queue.spec.jobTokens === "Preferred";
    const retryMs = preferred ? JOB_TOKEN_RETRY_MS : this.probeMs;
    this.refusedUntilMs = this.ctx.clock.nowMs() + retryMs;
    const minutes = Math.round(retryMs / 60_000);
    const again =
      retryMs >= 60_000
        ? `${String(minutes)} minute${minutes === 1 ? "" : "s"}`
        : `${String(Math.round(retryMs / 1000))} s`;
    this.setCondition(
      preferred
        ? {
            type: "JobTokens",
            status: "False",
            reason: "FallbackToAgentToken",
            message: `Buildkite did not issue job acquisition tokens (${err.message}); as spec.jobTokens is Preferred, job pods get the queue's cluster agent token instead. Asking again in ${again}.`,
          }
        : {
            type: "JobTokens",
            status: "False",
            reason: "JobTokensRefused",
            message: `Buildkite did not issue job acquisition tokens (${err.message}), so no job is reserved: spec.jobTokens is Required. Asking again in ${again}. Check that the agent token may issue job tokens; spec.jobTokens: Preferred would let pods use the cluster agent token instead.`,
          },
      queue,
    );
  }
}
