import type winston from "winston";
import type { ReconcileResult } from "../../operator/src/kube/work-queue.js";
import { AgentApiError, type AgentApi, type FinishBody, type Session } from "./fast-agent-api.js";
import type { AgentLaunch, AgentOutcome } from "./fast-pod.js";

/**
 * The agent half of {@link FastRunner}: what `buildkite-agent start --acquire-job` does for one pod, step by step
 * over the agent HTTP API, with the agent's retries. The Kubernetes half (reading the pod's env, writing its status)
 * is the runner's, behind {@link PodSide}.
 */

/** Where a pod's simulated agent is; each step is retried on its own, so a fault never repeats an earlier call. */
export type Step = "launch" | "register" | "acquire" | "start" | "running" | "finish" | "leave" | "write" | "done";

/** One pod's simulated agent. */
export interface Run {
  readonly uid: string;
  readonly pod: string;
  step: Step;
  launch?: AgentLaunch;
  session?: Session;
  jobToken?: string;
  /** Attempts of the current step, and when the next may go. */
  attempts: number;
  wakeAt: number;
  startedAt: number;
  finishAt: number;
  pollAt: number;
  heartbeatAt: number;
  finishBody?: FinishBody;
  outcome?: AgentOutcome;
  /** The pod was deleted (or replaced): its agent was stopped, no status is written. */
  gone: boolean;
}

export const newRun = (uid: string, pod: string): Run => ({
  uid,
  pod,
  step: "launch",
  attempts: 0,
  wakeAt: 0,
  startedAt: Date.now(),
  finishAt: 0,
  pollAt: 0,
  heartbeatAt: 0,
  gone: false,
});

/** The steps that are the kubelet's, not the agent's. */
export interface PodSide {
  /** Resolves what the agent starts with (and writes Running if the runner owns the start): the next step, or ms to wait. */
  launch(run: Run): Promise<Step | number>;
  /** Writes the pod's terminal status once the agent has exited. */
  write(run: Run): Promise<void>;
}

/** What the simulated jobs do: their run time, exit status and log. */
export interface JobScript {
  readonly durationMs?: number | ((uuid: string) => number);
  readonly exitCode?: (uuid: string) => number;
  readonly log?: (uuid: string, pod: string) => string;
}

/** What a runner counts; `refused` keeps the first calls refused for good, so a failing test can say why. */
export interface RunnerStats {
  handled: number;
  succeeded: number;
  failed: number;
  acquireFailures: number;
  refused: string[];
}

const REFUSALS_KEPT = 20;

/** The steps between the agent's connect and its disconnect, while its heartbeat runs. */
const SESSION_STEPS = new Set<Step>(["acquire", "start", "running", "finish"]);

/** The agent's attempts per call before it gives up (§2.3): register 30, acquire 7, start 7, finish 12. */
const ATTEMPTS: Partial<Record<Step, number>> = { register: 30, acquire: 7, start: 7, finish: 12 };

export class AgentSteps {
  constructor(
    private readonly api: AgentApi,
    private readonly script: JobScript,
    private readonly logger: winston.Logger,
    private readonly stats: RunnerStats,
  ) {}

  /** Takes steps until one must wait: returns when to look again. */
  async advance(run: Run, side: PodSide): Promise<ReconcileResult> {
    for (;;) {
      const step = run.step;
      try {
        await this.#heartbeat(run, step);
        const next = await this.#step(run, side);
        if (typeof next === "number") {
          run.wakeAt = Date.now() + next;
          return { requeueAfterMs: next };
        }
        run.step = next;
      } catch (err) {
        if (!(err instanceof AgentApiError)) throw err;
        // 429, 5xx, network, and 423 on acquire (the job is locked): again after Retry-After, or after a backoff
        // compressed from the agent's seconds.
        const retryable = err.retryable || (step === "acquire" && err.status === 423);
        if (retryable && ++run.attempts < (ATTEMPTS[step] ?? 10)) {
          const waitMs = err.retryAfterMs ?? Math.min(250 * 2 ** run.attempts, 10_000);
          run.wakeAt = Date.now() + waitMs;
          this.logger.debug("Retried an agent call later", { pod: run.pod, error: err.message, waitMs });
          return { requeueAfterMs: waitMs };
        }
        run.step = this.#giveUp(run, step, err);
      }
      // A pod replaced under the same name waits for its predecessor's agent: look at the key again.
      if (run.step === "done") return run.gone ? { requeueAfterMs: 1 } : undefined;
      if (run.step !== step) run.attempts = 0;
    }
  }

  /** As the kubelet's SIGTERM when the pod goes: an agent with a job finishes it as stopped; one without just leaves. */
  stop(run: Run): void {
    run.gone = true;
    if (run.step === "running" || run.step === "start")
      run.step = this.#setFinish(run, { exit_status: "-1", signal: "SIGTERM", signal_reason: "agent_stop" }, -1);
    else if (run.step !== "finish" && run.step !== "leave") run.step = run.session ? "leave" : "done";
    run.wakeAt = 0;
  }

  /** Records how the agent's attempt ended; returns `next`. */
  end(run: Run, outcome: AgentOutcome, next: Step): Step {
    run.outcome = outcome;
    if (outcome.kind !== "ran" && outcome.kind !== "no-job" && outcome.kind !== "errored") this.stats.acquireFailures++;
    return next;
  }

  /** Takes one step; returns the next, or how many ms to wait before trying this one again. */
  async #step(run: Run, side: PodSide): Promise<Step | number> {
    const now = Date.now();
    switch (run.step) {
      case "launch":
        return side.launch(run);
      case "register": {
        const launch = launchOf(run);
        const session = await this.api.register(launch.endpoint, launch.token ?? "", {
          name: launch.name,
          tags: launch.tags,
        });
        await this.api.connect(session);
        run.session = session;
        run.heartbeatAt = Date.now() + session.heartbeatIntervalMs;
        return "acquire";
      }
      case "acquire":
        run.jobToken = await this.api.acquire(sessionOf(run), uuidOf(run), run.attempts);
        return "start";
      case "start": {
        const session = sessionOf(run);
        const uuid = uuidOf(run);
        await this.api.start(session, uuid, tokenOf(run));
        const text = (this.script.log ?? defaultLog)(uuid, run.pod);
        if (text !== "") await this.api.chunk(session, uuid, tokenOf(run), text).catch(() => undefined);
        const { durationMs = 0 } = this.script;
        run.finishAt = now + (typeof durationMs === "number" ? durationMs : durationMs(uuid));
        return "running";
      }
      case "running":
        return this.#running(run, now);
      case "finish":
        await this.api.finish(sessionOf(run), uuidOf(run), tokenOf(run), run.finishBody ?? { exit_status: "-1" });
        return "leave";
      case "leave": {
        // As the agent: one ping after the job (not after a 422), then disconnect; failures only delay its exit.
        const session = sessionOf(run);
        if (run.outcome?.kind !== "acquire-rejected") await this.api.ping(session).catch(() => undefined);
        await this.api.disconnect(session).catch(() => undefined);
        return run.gone ? "done" : "write";
      }
      case "write":
        if (!run.gone) await side.write(run);
        return "done";
      case "done":
        return "done";
    }
  }

  /** While the simulated job runs: the agent's cancellation poll and heartbeat, then finish with the job's status. */
  async #running(run: Run, now: number): Promise<Step | number> {
    const session = sessionOf(run);
    const uuid = uuidOf(run);
    if (now >= run.finishAt) {
      const code = this.script.exitCode?.(uuid) ?? 0;
      return this.#setFinish(run, { exit_status: String(code) }, code);
    }
    if (now >= run.pollAt) {
      run.pollAt = now + session.jobStatusIntervalMs;
      const state = await this.api.jobState(session, uuid, tokenOf(run)).catch(() => "");
      // A cancelled or timed-out job is stopped with SIGTERM and finished as signalled (§2.3 step 8; agent 3.138.1).
      if (["canceling", "canceled", "timing_out", "timed_out"].includes(state))
        return this.#setFinish(run, { exit_status: "-1", signal: "SIGTERM", signal_reason: "cancel" }, -1);
    }
    await this.#heartbeat(run, "running");
    return Math.max(0, Math.min(run.finishAt, run.pollAt, run.heartbeatAt) - Date.now());
  }

  /**
   * The agent's heartbeat runs from its connect to its disconnect, beside every call: a run waiting out retries of
   * acquire, start or finish keeps its session alive, as the agent does (the fake ends a silent one as lost).
   */
  async #heartbeat(run: Run, step: Step): Promise<void> {
    const session = run.session;
    if (!session || !SESSION_STEPS.has(step)) return;
    const now = Date.now();
    if (run.heartbeatAt === 0) run.heartbeatAt = now + session.heartbeatIntervalMs;
    if (now < run.heartbeatAt) return;
    run.heartbeatAt = now + session.heartbeatIntervalMs;
    await this.api.heartbeat(session).catch(() => undefined);
  }

  /** A step that failed for good: the step the agent goes on with when that call is refused. */
  #giveUp(run: Run, step: Step, err: AgentApiError): Step {
    this.logger.info("Agent call refused", {
      pod: run.launch?.name,
      job: run.launch?.uuid,
      route: err.route,
      status: err.status,
    });
    if (this.stats.refused.length < REFUSALS_KEPT)
      this.stats.refused.push(`${run.pod}: ${err.message} (attempt ${String(run.attempts + 1)})`);
    switch (step) {
      case "register":
        return this.end(run, { kind: "register-refused" }, "write");
      case "acquire":
        return this.end(
          run,
          { kind: err.status === 422 ? "acquire-rejected" : err.status === 423 ? "locked" : "acquire-refused" },
          "leave",
        );
      case "start":
        // The agent never finishes a job it could not start (§2.3 step 6) and exits with an error.
        return this.end(run, { kind: "errored" }, "leave");
      default:
        // A refused finish means the job was already finished or cancelled (§2.3 step 9): the agent moves on.
        return step === "finish" ? "leave" : "write";
    }
  }

  /** Records the finish the agent will send; the next step is to send it. */
  #setFinish(run: Run, body: FinishBody, jobExit: number): Step {
    run.finishBody = body;
    run.outcome = { kind: "ran", jobExit };
    return "finish";
  }
}

export function launchOf(run: Run): AgentLaunch {
  if (!run.launch) throw new Error("fast runner: a run past launch has no launch");
  return run.launch;
}

const uuidOf = (run: Run): string => launchOf(run).uuid ?? "";

function sessionOf(run: Run): Session {
  if (!run.session) throw new Error("fast runner: a run past register has no session");
  return run.session;
}

const tokenOf = (run: Run): string => run.jobToken ?? sessionOf(run).accessToken;

const defaultLog = (uuid: string, pod: string): string => `fast-runner: job ${uuid} ran in pod ${pod}\n`;
