import {
  CoreV1Api,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type KubeConfig,
  type V1Pod,
  type V1Secret,
} from "@kubernetes/client-node";
import winston from "winston";
import { apiMessage, isConflict, isInvalid, isNotFound } from "../../operator/src/kube/field-manager.js";
import { realClock } from "../../operator/src/kube/clock.js";
import { SupervisedInformer } from "../../operator/src/kube/supervised-informer.js";
import { WorkQueue, type ReconcileResult } from "../../operator/src/kube/work-queue.js";
import { AgentApi, AgentApiError, type FinishBody, type Session } from "./fast-agent-api.js";
import {
  agentExitCode,
  agentLaunch,
  ownsStart,
  runningPatch,
  takes,
  terminatedPatch,
  type AgentLaunch,
  type AgentOutcome,
} from "./fast-pod.js";

export { FAST_RUNNER } from "./fast-pod.js";

/** Options for {@link FastRunner.start}. */
export interface FastRunnerOptions {
  readonly kubeConfig: KubeConfig;
  /** Namespaces whose pods are watched. */
  readonly namespaces: readonly string[];
  /** The agent endpoint for pods without BUILDKITE_AGENT_ENDPOINT (the fake's `agentEndpoint`). */
  readonly fakeEndpoint: string;
  /** Simulated run time between start and finish (default 0), or each job's own. */
  readonly durationMs?: number | ((uuid: string) => number);
  /** The job's exit status (default 0). */
  readonly exitCode?: (uuid: string) => number;
  /** Also take unannotated pods once KWOK has made them Running (other controllers' pods). Default false. */
  readonly adoptAll?: boolean;
  /** Pods advanced at once (default 64); a job's simulated run time holds no slot. */
  readonly concurrency?: number;
  /** The job's log, uploaded as one chunk; "" uploads none. Default: one line naming the pod. */
  readonly log?: (uuid: string, pod: string) => string;
  /** Default: silent. Lines name pods and jobs, never tokens. */
  readonly logger?: winston.Logger;
}

/** One job the runner played the agent for. */
export interface FastRun {
  readonly pod: string;
  /** The agent container's exit code (27 = acquire rejected). */
  readonly exitCode: number;
  readonly startedAt: number;
  readonly finishedAt: number;
}

/** Where a pod's simulated agent is; each step is retried on its own, so a fault never repeats an earlier call. */
type Step = "launch" | "register" | "acquire" | "start" | "running" | "finish" | "leave" | "write" | "done";

interface Run {
  readonly uid: string;
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

/** The agent's attempts per call before it gives up (§2.3): register 30, acquire 7, start 7, finish 12. */
const ATTEMPTS: Partial<Record<Step, number>> = { register: 30, acquire: 7, start: 7, finish: 12 };
const strategicMerge = setHeaderOptions("Content-Type", PatchStrategy.StrategicMergePatch);

/**
 * A kubelet stand-in that plays `buildkite-agent start --acquire-job` over the agent HTTP API instead of running it:
 * for thousands of jobs a minute on two cores (benchmarks, chaos runs), where {@link PodRunner}'s real agent costs a
 * process and about a second per job. It watches pods annotated `kwok.test/runner: fast` (and, with `adoptAll`, any
 * pod KWOK made Running), then registers with the pod's token, connects, acquires the job (honouring 423
 * Retry-After), starts it, uploads a log chunk, polls for cancellation while the simulated job runs, finishes it,
 * disconnects, and writes the pod's status as the kubelet would: Running first (annotated pods only; KWOK skips
 * them), then Succeeded or Failed with the agent's exit code.
 */
export class FastRunner {
  readonly #core: CoreV1Api;
  readonly #api: AgentApi;
  readonly #queue: WorkQueue;
  readonly #pods = new Map<string, SupervisedInformer<V1Pod>>();
  readonly #secrets = new Map<string, SupervisedInformer<V1Secret>>();
  readonly #decoded = new Map<string, { rv: string | undefined; value: string | undefined }>();
  readonly #active = new Map<string, Run>();
  readonly #runs = new Map<string, FastRun>();
  readonly #stats = { handled: 0, succeeded: 0, failed: 0, acquireFailures: 0 };
  readonly #logger: winston.Logger;

  private constructor(private readonly options: FastRunnerOptions) {
    const { kubeConfig: kc } = options;
    this.#core = kc.makeApiClient(CoreV1Api);
    this.#api = new AgentApi(options.concurrency ?? 64);
    this.#logger = options.logger ?? winston.createLogger({ silent: true });
    this.#queue = new WorkQueue({
      name: "fast-runner",
      clock: realClock,
      baseDelayMs: 100,
      maxDelayMs: 10_000,
      onDone: ({ key, error }) => {
        if (error !== undefined)
          this.#logger.warn("Failed a pod step; retrying", { pod: key, error: apiMessage(error) });
      },
    });
    const logger = this.#logger;
    for (const namespace of options.namespaces) {
      const core = this.#core;
      this.#pods.set(
        namespace,
        new SupervisedInformer<V1Pod>({
          name: `pods/${namespace}`,
          clock: realClock,
          logger,
          onChange: (pod) => {
            this.#queue.add(`${namespace}/${pod.metadata?.name ?? ""}`);
          },
          factory: () =>
            makeInformer<V1Pod>(kc, `/api/v1/namespaces/${namespace}/pods`, () =>
              core.listNamespacedPod({ namespace }),
            ),
        }),
      );
      this.#secrets.set(
        namespace,
        new SupervisedInformer<V1Secret>({
          name: `secrets/${namespace}`,
          clock: realClock,
          logger,
          onChange: () => undefined,
          factory: () =>
            makeInformer<V1Secret>(kc, `/api/v1/namespaces/${namespace}/secrets`, () =>
              core.listNamespacedSecret({ namespace }),
            ),
        }),
      );
    }
  }

  /** Starts watching; resolves once every informer has listed. */
  static async start(options: FastRunnerOptions): Promise<FastRunner> {
    const runner = new FastRunner(options);
    const informers = [...runner.#pods.values(), ...runner.#secrets.values()];
    await Promise.all(
      informers.map(async (i) => {
        await i.start();
        await i.waitForSync(30_000);
      }),
    );
    runner.#queue.start(options.concurrency ?? 64, (key) => runner.#reconcile(key));
    return runner;
  }

  stats(): { handled: number; succeeded: number; failed: number; acquireFailures: number } {
    return { ...this.#stats };
  }

  /** Finished jobs by uuid. */
  runs(): Map<string, FastRun> {
    return new Map(this.#runs);
  }

  /** Stops watching and waits for the pods being advanced; runs still waiting are left as they are. */
  async stop(): Promise<void> {
    await this.#queue.shutdown();
    await Promise.all([...this.#pods.values(), ...this.#secrets.values()].map((i) => i.stop()));
    this.#api.close();
  }

  async #reconcile(key: string): Promise<ReconcileResult> {
    const [namespace = "", name = ""] = key.split("/");
    const pod = this.#pods.get(namespace)?.get(name, namespace);
    const deleting = pod?.metadata?.deletionTimestamp !== undefined;
    let run = this.#active.get(key);
    const same = run !== undefined && pod?.metadata?.uid === run.uid;
    if (run && run.step !== "done" && !run.gone && (!same || deleting)) {
      // As the kubelet's SIGTERM: an agent with a job finishes it as stopped; one without just leaves.
      run.gone = true;
      if (run.step === "running" || run.step === "start")
        run.step = this.#setFinish(run, { exit_status: "-1", signal: "SIGTERM", signal_reason: "agent_stop" }, -1);
      else if (run.step !== "finish" && run.step !== "leave") run.step = run.session ? "leave" : "done";
      run.wakeAt = 0;
    }
    if (run?.step === "done") {
      // Kept while its pod lives: the cache may still show the pod Running after the terminal write.
      if (same) return;
      this.#active.delete(key);
      run = undefined;
    }
    if (!run) {
      if (!pod || !takes(pod, this.options.adoptAll ?? false)) return;
      run = {
        uid: pod.metadata?.uid ?? "",
        step: "launch",
        attempts: 0,
        wakeAt: 0,
        startedAt: Date.now(),
        finishAt: 0,
        pollAt: 0,
        heartbeatAt: 0,
        gone: false,
      };
      this.#active.set(key, run);
      this.#stats.handled++;
    }
    const wait = run.wakeAt - Date.now();
    if (wait > 0) return { requeueAfterMs: wait };
    return this.#advance(run, namespace, pod);
  }

  /** Takes steps until one must wait: returns when to look again. */
  async #advance(run: Run, namespace: string, pod: V1Pod | undefined): Promise<ReconcileResult> {
    for (;;) {
      const step = run.step;
      try {
        const next = await this.#step(run, namespace, pod);
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
          this.#logger.debug("Retried an agent call later", {
            namespace,
            pod: pod?.metadata?.name,
            error: err.message,
            waitMs,
          });
          return { requeueAfterMs: waitMs };
        }
        run.step = this.#giveUp(run, step, err);
      }
      // A pod replaced under the same name waits for its predecessor's agent: look at the key again.
      if (run.step === "done") return run.gone ? { requeueAfterMs: 1 } : undefined;
      if (run.step !== step) run.attempts = 0;
    }
  }

  /** Takes one step; returns the next, or how many ms to wait before trying this one again. */
  async #step(run: Run, namespace: string, pod: V1Pod | undefined): Promise<Step | number> {
    const now = Date.now();
    switch (run.step) {
      case "launch": {
        if (!pod) return "done";
        const launch = (run.launch = await agentLaunch(pod, this.options.fakeEndpoint, (name, key) =>
          this.#secret(namespace, name, key),
        ));
        if (
          ownsStart(pod) &&
          !(await this.#patchStatus(run, namespace, pod, runningPatch(pod, new Date(run.startedAt))))
        )
          return "done";
        if (launch.uuid === undefined) return this.#end(run, { kind: "no-job" }, "write");
        // The agent refuses to start without a token; it would exit 1 as for a refused register.
        if (launch.token === undefined || launch.token === "")
          return this.#end(run, { kind: "register-refused" }, "write");
        return "register";
      }
      case "register": {
        const launch = this.#launch(run);
        const session = await this.#api.register(launch.endpoint, launch.token ?? "", {
          name: launch.name,
          tags: launch.tags,
        });
        await this.#api.connect(session);
        run.session = session;
        return "acquire";
      }
      case "acquire":
        run.jobToken = await this.#api.acquire(this.#session(run), this.#uuid(run), run.attempts);
        return "start";
      case "start": {
        const session = this.#session(run);
        await this.#api.start(session, this.#uuid(run), this.#token(run));
        const text = (this.options.log ?? defaultLog)(this.#uuid(run), pod?.metadata?.name ?? "");
        if (text !== "") await this.#api.chunk(session, this.#uuid(run), this.#token(run), text).catch(() => undefined);
        const { durationMs = 0 } = this.options;
        run.finishAt = now + (typeof durationMs === "number" ? durationMs : durationMs(this.#uuid(run)));
        run.heartbeatAt = now + session.heartbeatIntervalMs;
        return "running";
      }
      case "running":
        return this.#running(run, now);
      case "finish":
        await this.#api.finish(
          this.#session(run),
          this.#uuid(run),
          this.#token(run),
          run.finishBody ?? { exit_status: "-1" },
        );
        return "leave";
      case "leave": {
        // As the agent: one ping after the job (not after a 422), then disconnect; failures only delay its exit.
        const session = this.#session(run);
        if (run.outcome?.kind !== "acquire-rejected") await this.#api.ping(session).catch(() => undefined);
        await this.#api.disconnect(session).catch(() => undefined);
        return run.gone ? "done" : "write";
      }
      case "write":
        if (!pod || run.gone) return "done";
        await this.#writeTerminal(run, namespace, pod);
        return "done";
      case "done":
        return "done";
    }
  }

  /** While the simulated job runs: the agent's cancellation poll and heartbeat, then finish with the job's status. */
  async #running(run: Run, now: number): Promise<Step | number> {
    const session = this.#session(run);
    const uuid = this.#uuid(run);
    if (now >= run.finishAt) {
      const code = this.options.exitCode?.(uuid) ?? 0;
      return this.#setFinish(run, { exit_status: String(code) }, code);
    }
    if (now >= run.pollAt) {
      run.pollAt = now + session.jobStatusIntervalMs;
      const state = await this.#api.jobState(session, uuid, this.#token(run)).catch(() => "");
      // A cancelled or timed-out job is stopped with SIGTERM and finished as signalled (§2.3 step 8; agent 3.138.1).
      if (["canceling", "canceled", "timing_out", "timed_out"].includes(state))
        return this.#setFinish(run, { exit_status: "-1", signal: "SIGTERM", signal_reason: "cancel" }, -1);
    }
    if (now >= run.heartbeatAt) {
      run.heartbeatAt = now + session.heartbeatIntervalMs;
      await this.#api.heartbeat(session).catch(() => undefined);
    }
    return Math.max(0, Math.min(run.finishAt, run.pollAt, run.heartbeatAt) - Date.now());
  }

  /** A step that failed for good: the step the agent goes on with when that call is refused. */
  #giveUp(run: Run, step: Step, err: AgentApiError): Step {
    this.#logger.info("Agent call refused", {
      pod: run.launch?.name,
      job: run.launch?.uuid,
      route: err.route,
      status: err.status,
    });
    switch (step) {
      case "register":
        return this.#end(run, { kind: "register-refused" }, "write");
      case "acquire":
        return this.#end(
          run,
          { kind: err.status === 422 ? "acquire-rejected" : err.status === 423 ? "locked" : "acquire-refused" },
          "leave",
        );
      case "start":
        // The agent never finishes a job it could not start (§2.3 step 6) and exits with an error.
        return this.#end(run, { kind: "errored" }, "leave");
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

  /** Records how the agent's attempt ended; returns `next`. */
  #end(run: Run, outcome: AgentOutcome, next: Step): Step {
    run.outcome = outcome;
    if (outcome.kind !== "ran" && outcome.kind !== "no-job" && outcome.kind !== "errored")
      this.#stats.acquireFailures++;
    return next;
  }

  async #writeTerminal(run: Run, namespace: string, pod: V1Pod): Promise<void> {
    const launch = this.#launch(run);
    const outcome = run.outcome ?? { kind: "no-job" };
    const exitCode = agentExitCode(outcome, launch.reflect);
    const finishedAt = Date.now();
    const patch = terminatedPatch(
      pod,
      launch.container,
      exitCode,
      outcome.kind === "ran" ? outcome.jobExit : undefined,
      new Date(run.startedAt),
      new Date(finishedAt),
    );
    if (!(await this.#patchStatus(run, namespace, pod, patch))) return;
    const phase = (patch as { status: { phase: string } }).status.phase;
    this.#stats[phase === "Succeeded" ? "succeeded" : "failed"]++;
    if (launch.uuid !== undefined)
      this.#runs.set(launch.uuid, { pod: pod.metadata?.name ?? "", exitCode, startedAt: run.startedAt, finishedAt });
  }

  /**
   * One strategic-merge patch of the status subresource, no read and no conflict; false if the pod is gone (404) or
   * replaced: the patch's metadata.uid then differs, which the API server refuses with 422 "field is immutable".
   */
  async #patchStatus(run: Run, namespace: string, pod: V1Pod, body: object): Promise<boolean> {
    try {
      await this.#core.patchNamespacedPodStatus({ name: pod.metadata?.name ?? "", namespace, body }, strategicMerge);
      return true;
    } catch (err) {
      if (!isNotFound(err) && !isConflict(err) && !isInvalid(err)) throw err;
      this.#logger.info("Left a pod that is gone or replaced", {
        namespace,
        pod: pod.metadata?.name,
        error: apiMessage(err),
      });
      run.gone = true;
      return false;
    }
  }

  /** A Secret's key from the namespace's watch (a direct read if the watch has not seen it yet), decoded once per resourceVersion. */
  async #secret(namespace: string, name: string, key: string): Promise<string | undefined> {
    let secret = this.#secrets.get(namespace)?.get(name, namespace);
    if (!secret) {
      try {
        secret = await this.#core.readNamespacedSecret({ name, namespace });
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    }
    const id = `${namespace}/${name}/${key}`;
    const rv = secret.metadata?.resourceVersion;
    const cached = this.#decoded.get(id);
    if (cached && cached.rv === rv) return cached.value;
    const data = secret.data?.[key];
    const value = data === undefined ? undefined : Buffer.from(data, "base64").toString("utf8");
    this.#decoded.set(id, { rv, value });
    return value;
  }

  #launch(run: Run): AgentLaunch {
    if (!run.launch) throw new Error("fast runner: a run past launch has no launch");
    return run.launch;
  }

  #uuid(run: Run): string {
    return this.#launch(run).uuid ?? "";
  }

  #session(run: Run): Session {
    if (!run.session) throw new Error("fast runner: a run past register has no session");
    return run.session;
  }

  #token(run: Run): string {
    return run.jobToken ?? this.#session(run).accessToken;
  }
}

const defaultLog = (uuid: string, pod: string): string => `fast-runner: job ${uuid} ran in pod ${pod}\n`;
