import type { Informer, KubeConfig, ObjectCache, V1Pod } from "@kubernetes/client-node";
import winston from "winston";
import { apiMessage, isConflict, isInvalid, isNotFound } from "../../operator/src/kube/field-manager.js";
import { realClock } from "../../operator/src/kube/clock.js";
import { LeanInformer } from "../../operator/src/kube/lean-informer.js";
import { SupervisedInformer } from "../../operator/src/kube/supervised-informer.js";
import { WorkQueue, type ReconcileResult } from "../../operator/src/kube/work-queue.js";
import { AgentApi } from "./fast-agent-api.js";
import {
  AgentSteps,
  launchOf,
  newRun,
  type PodSide,
  type Run,
  type RunnerStats,
  type Step,
} from "./fast-agent-steps.js";
import { agentExitCode, agentLaunch, ownsStart, runningPatch, takes, terminatedPatch } from "./fast-pod.js";
import { SecretCache, SecretNotCached } from "./fast-secrets.js";
import { KubeRaw, STRATEGIC_MERGE_PATCH } from "./kube-raw.js";

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
  /**
   * Pod informers of some namespaces that the caller runs (started and synced, kept running while the runner runs),
   * used instead of a watch of the runner's own: where the caller watches the pods anyway (the benchmark), each pod
   * event is then parsed once, not twice.
   */
  readonly podInformers?: ReadonlyMap<string, Informer<V1Pod> & ObjectCache<V1Pod>>;
}

/** One job the runner played the agent for. */
export interface FastRun {
  readonly pod: string;
  /** The agent container's exit code (27 = acquire rejected). */
  readonly exitCode: number;
  readonly startedAt: number;
  readonly finishedAt: number;
}

/** A pod's run, since when it has waited for a Secret to show in the watch, and whether it has read one live. */
type PodRun = Run & { secretWaitFrom?: number; secretReadLive?: boolean };

/**
 * How long a pod waits for a Secret to show in the Secrets' watch before the runner reads it live, once, if the watch
 * has not reached the pod's resourceVersion by then (see {@link SecretCache.reached}). A Secret created before the pod
 * can show in its watch after the pod shows in its own, by milliseconds or, in a burst, by more: waiting costs
 * nothing, where a read would cost the API server a GET per job.
 */
const SECRET_WAIT_MS = 2_000;
/**
 * The first look again for a Secret not yet seen, doubled each time up to {@link SECRET_RETRY_MAX_MS}: a fallback
 * only, since the Secret's arrival wakes the pod.
 */
const SECRET_RETRY_MS = 50;
const SECRET_RETRY_MAX_MS = 1_000;

/**
 * A kubelet stand-in that plays `buildkite-agent start --acquire-job` over the agent HTTP API instead of running it:
 * for thousands of jobs a minute on two cores (benchmarks, chaos runs), where {@link PodRunner}'s real agent costs a
 * process and about a second per job. It watches pods annotated `kwok.test/runner: fast` (and, with `adoptAll`, any
 * pod KWOK made Running), then registers with the pod's token, connects, acquires the job (honouring 423
 * Retry-After), starts it, uploads a log chunk, polls for cancellation while the simulated job runs, finishes it,
 * disconnects (see {@link AgentSteps}), and writes the pod's status as the kubelet would: Running first (annotated
 * pods only; KWOK skips them), then Succeeded or Failed with the agent's exit code.
 */
export class FastRunner {
  readonly #api: AgentApi;
  readonly #steps: AgentSteps;
  readonly #queue: WorkQueue;
  /** Each namespace's pods: the runner's own watch, or one the caller shares. */
  readonly #pods = new Map<string, ObjectCache<V1Pod>>();
  readonly #own: SupervisedInformer<V1Pod>[] = [];
  /** Unsubscribes from shared informers. */
  readonly #detach: (() => void)[] = [];
  readonly #secrets: SecretCache;
  readonly #kube: KubeRaw;
  readonly #active = new Map<string, PodRun>();
  readonly #runs = new Map<string, FastRun>();
  readonly #stats: RunnerStats = { handled: 0, succeeded: 0, failed: 0, acquireFailures: 0, refused: [] };
  readonly #logger: winston.Logger;

  private constructor(private readonly options: FastRunnerOptions) {
    const kube = (this.#kube = new KubeRaw(options.kubeConfig));
    this.#api = new AgentApi(options.concurrency ?? 64);
    this.#logger = options.logger ?? winston.createLogger({ silent: true });
    this.#steps = new AgentSteps(this.#api, options, this.#logger, this.#stats);
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
    this.#secrets = new SecretCache(kube, options.namespaces, logger, (waiters) => {
      // The Secret a pod waits for has arrived: look at the pod now rather than at its next retry.
      for (const key of waiters) {
        const run = this.#active.get(key);
        if (run?.step === "launch") run.wakeAt = 0;
        this.#queue.add(key);
      }
    });
    for (const namespace of options.namespaces) {
      const enqueue = (pod: V1Pod): void => {
        this.#queue.add(`${namespace}/${pod.metadata?.name ?? ""}`);
      };
      const shared = options.podInformers?.get(namespace);
      if (shared) {
        for (const verb of ["add", "update", "delete"] as const) shared.on(verb, enqueue);
        this.#detach.push(() => {
          for (const verb of ["add", "update", "delete"] as const) shared.off(verb, enqueue);
        });
        this.#pods.set(namespace, shared);
        continue;
      }
      const own = new SupervisedInformer<V1Pod>({
        name: `pods/${namespace}`,
        clock: realClock,
        logger,
        onChange: enqueue,
        factory: () => new LeanInformer<V1Pod>(kube, `/api/v1/namespaces/${namespace}/pods`),
      });
      this.#own.push(own);
      this.#pods.set(namespace, own);
    }
  }

  /** Starts watching; resolves once every informer has listed. */
  static async start(options: FastRunnerOptions): Promise<FastRunner> {
    const runner = new FastRunner(options);
    await Promise.all(
      runner.#informers().map(async (i) => {
        await i.start();
        await i.waitForSync(30_000);
      }),
    );
    // Shared informers listed before the runner was there: their pods are looked at once, as after a list.
    for (const [namespace, pods] of runner.#pods)
      if (options.podInformers?.has(namespace))
        for (const pod of pods.list(namespace)) runner.#queue.add(`${namespace}/${pod.metadata?.name ?? ""}`);
    runner.#queue.start(options.concurrency ?? 64, (key) => runner.#reconcile(key));
    return runner;
  }

  stats(): RunnerStats {
    return { ...this.#stats, refused: [...this.#stats.refused] };
  }

  /** Finished jobs by uuid. */
  runs(): Map<string, FastRun> {
    return new Map(this.#runs);
  }

  /** Stops watching and waits for the pods being advanced; runs still waiting are left as they are. */
  async stop(): Promise<void> {
    for (const detach of this.#detach.splice(0)) detach();
    await this.#queue.shutdown();
    await Promise.all(this.#informers().map((i) => i.stop()));
    this.#api.close();
  }

  #informers(): { start(): Promise<void>; waitForSync(ms: number): Promise<void>; stop(): Promise<void> }[] {
    return [...this.#own, ...this.#secrets.informers()];
  }

  async #reconcile(key: string): Promise<ReconcileResult> {
    const [namespace = "", name = ""] = key.split("/");
    const pod = this.#pods.get(namespace)?.get(name, namespace);
    const deleting = pod?.metadata?.deletionTimestamp !== undefined;
    let run = this.#active.get(key);
    const same = run !== undefined && pod?.metadata?.uid === run.uid;
    if (run && run.step !== "done" && !run.gone && (!same || deleting)) {
      this.#logger.info("Stopped the agent of a pod gone or replaced", {
        pod: key,
        step: run.step,
        cached: pod !== undefined,
        same,
        deleting,
        phase: pod?.status?.phase,
      });
      this.#steps.stop(run);
    }
    if (run?.step === "done") {
      // Kept while its pod lives: the cache may still show the pod Running after the terminal write.
      if (same) return;
      this.#active.delete(key);
      run = undefined;
    }
    if (!run) {
      if (!pod || !takes(pod, this.options.adoptAll ?? false)) return;
      run = newRun(pod.metadata?.uid ?? "", name);
      this.#active.set(key, run);
      this.#stats.handled++;
    }
    const wait = run.wakeAt - Date.now();
    if (wait > 0) return { requeueAfterMs: wait };
    const side: PodSide = {
      launch: (r) => this.#launch(r, key, namespace, pod),
      write: (r) => (pod ? this.#writeTerminal(r, namespace, pod) : Promise.resolve()),
    };
    return this.#steps.advance(run, side);
  }

  /**
   * Resolves the agent container's env as the kubelet would, its token from the Secrets' watch (waiting for a Secret
   * the watch has not shown, see {@link SecretCache}), and writes Running for a pod KWOK leaves alone.
   */
  async #launch(run: PodRun, key: string, namespace: string, pod: V1Pod | undefined): Promise<Step | number> {
    if (!pod) return "done";
    const now = Date.now();
    const waitEnds = (run.secretWaitFrom ?? now) + SECRET_WAIT_MS;
    const live =
      !run.secretReadLive && now >= waitEnds && !this.#secrets.reached(namespace, pod.metadata?.resourceVersion);
    if (live) run.secretReadLive = true;
    try {
      run.launch = await agentLaunch(pod, this.options.fakeEndpoint, (name, k, optional) =>
        this.#secrets.read(namespace, name, k, { live, optional, waiter: key }),
      );
    } catch (err) {
      if (!(err instanceof SecretNotCached)) throw err;
      if (run.secretWaitFrom === undefined)
        this.#logger.debug("Waited for a Secret the watch has not shown", {
          namespace,
          pod: run.pod,
          secret: err.secret,
        });
      run.secretWaitFrom ??= now;
      const backoff = Math.min(SECRET_RETRY_MS * 2 ** run.attempts++, SECRET_RETRY_MAX_MS);
      return Math.max(1, now < waitEnds ? Math.min(backoff, waitEnds - now) : backoff);
    }
    const launch = run.launch;
    if (ownsStart(pod) && !(await this.#patchStatus(run, namespace, pod, runningPatch(pod, new Date(run.startedAt)))))
      return "done";
    if (launch.uuid === undefined) return this.#steps.end(run, { kind: "no-job" }, "write");
    // The agent refuses to start without a token; it would exit 1 as for a refused register.
    if (launch.token === undefined || launch.token === "")
      return this.#steps.end(run, { kind: "register-refused" }, "write");
    return "register";
  }

  async #writeTerminal(run: Run, namespace: string, pod: V1Pod): Promise<void> {
    const launch = launchOf(run);
    const outcome = run.outcome ?? { kind: "no-job" };
    const exitCode = agentExitCode(outcome, launch.reflect);
    const finishedAt = Date.now();
    // A pod KWOK started keeps the start it was given, as a kubelet's containers keep theirs.
    const startedAt = ownsStart(pod) ? run.startedAt : (pod.status?.startTime ?? run.startedAt);
    const patch = terminatedPatch(
      pod,
      launch.container,
      exitCode,
      outcome.kind === "ran" ? outcome.jobExit : undefined,
      new Date(startedAt),
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
      const path = `/api/v1/namespaces/${namespace}/pods/${pod.metadata?.name ?? ""}/status`;
      await this.#kube.send("PATCH", path, body, STRATEGIC_MERGE_PATCH);
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
}
