import { CoreV1Api, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { spawnSync } from "node:child_process";
import { existsSync, realpathSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isConflict, isNotFound } from "../../operator/src/kube/field-manager.js";
import { hackBinary } from "./binaries.js";
import { ContainerConfigError, prepareLaunch } from "./container-launch.js";
import { UNSHARE } from "./container-process.js";
import { eventually } from "./eventually.js";
import { apiKeySource, runnable } from "./kubelet-env.js";
import { podStatus } from "./kubelet-status.js";
import { onExit } from "./managed-process.js";
import { PodExecution, type PodRun } from "./pod-execution.js";
import { apiTokenSource, mountVolumes, VolumeError } from "./pod-volumes.js";

export type { ContainerKind, ContainerRun, PodRun } from "./pod-execution.js";

/** Pods annotated `kwok.test/runner: real` are run by {@link PodRunner}; KWOK's stages skip any pod with this key. */
export const RUNNER_ANNOTATION = "kwok.test/runner";
const POLL_MS = 200;

/** Options for {@link PodRunner.start}. */
export interface PodRunnerOptions {
  readonly kubeConfig: KubeConfig;
  /** The one namespace whose pods are run. */
  readonly namespace: string;
  /** What `buildkite-agent` in a container's command means here (default `hack/bin/buildkite-agent`). */
  readonly agentBinary?: string;
  /**
   * Where pod directories go (default a fresh short temp dir, removed by stop()). Short: Unix socket paths (the
   * agent's under HOME, the Kubernetes mode's in the workspace volume) must stay under 108 bytes.
   */
  readonly workDir?: string;
  /** Cap on a pod's termination grace period before SIGKILL (default 3 s). */
  readonly maxGraceMs?: number;
}

/**
 * Plays kubelet for the pods of one namespace annotated `kwok.test/runner: real`: once the scheduler binds such a
 * pod, it mounts its volumes as local directories, resolves each container's environment as the kubelet does, runs
 * the containers' commands as local processes (the init containers in order, native sidecars left running, then the
 * regular containers at once) with the real buildkite-agent on this machine for `buildkite-agent`, and writes the
 * pod's status as they start and stop (Pending, Running, then Succeeded or Failed, a status for every container).
 * Both the pod of one `agent` container and the pod of one role per container (docs/pod-layout.md) run. It polls
 * rather than watches: a level-based loop that cannot die silently, quick enough for tests.
 *
 * What a container gets: its command and args (a missing command means the image's entrypoint, known only for the
 * agent image), its env (value, `$(VAR)`, Secret and ConfigMap keys, `envFrom`, downward API fields), its working
 * directory, and its own PID namespace where `unshare` works. Volumes (emptyDir, PVC, Secret, ConfigMap, downward
 * API, and projections of these and of ServiceAccount tokens) are directories under the pod's; their mount paths are rewritten to those
 * directories wherever they appear in args, env values and the working dir (see container-launch.ts). An image's
 * `buildkite-agent` (bare, or any `…/buildkite-agent` outside the pod's volumes) is the local binary, which is also
 * first on every PATH: so copy-agent's `cp` puts the real agent into the buildkite-bin volume's directory, and the
 * containers that run `/buildkite/bin/buildkite-agent` run that copy.
 *
 * What it does not do: images (every container runs on this machine's filesystem, users and tools), network or
 * mount namespaces (all containers share the host's loopback, so a sidecar is reachable on localhost as in a pod),
 * resource limits, probes, restarts (restartPolicy Never is assumed: a failed init container fails the pod),
 * preStop hooks (a stopped container gets SIGTERM, then SIGKILL after the grace period, capped at maxGraceMs),
 * readOnly mounts, and volume refreshes. A sidecar whose command is not on this machine (e.g. a postgres image) is
 * not run but reported as running, with a note in the pod's status.message and in {@link PodRun}; a regular or init
 * container whose command is not here ends at once with StartError, exit 128.
 */
export class PodRunner {
  readonly #core: CoreV1Api;
  readonly #runs = new Map<string, PodExecution>();
  readonly #preparing = new Set<Promise<unknown>>();
  readonly #forgetExitHook: () => void;
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> = Promise.resolve();
  #stopped = false;
  #lastError: Error | undefined;

  private constructor(
    kc: KubeConfig,
    readonly namespace: string,
    readonly agentBinary: string,
    readonly workDir: string,
    private readonly ownDir: boolean,
    private readonly maxGraceMs: number,
    private readonly isolated: boolean,
  ) {
    this.#core = kc.makeApiClient(CoreV1Api);
    // An interrupted test run kills every container and removes the directory; setpriv --pdeathsig covers a runner
    // killed outright.
    this.#forgetExitHook = onExit(() => {
      for (const run of this.#runs.values()) run.kill();
      if (this.#removeDir()) rmSync(workDir, { recursive: true, force: true });
    });
  }

  static async start(options: PodRunnerOptions): Promise<PodRunner> {
    const binary = options.agentBinary ?? hackBinary("buildkite-agent");
    if (!existsSync(binary))
      throw new Error(`pod runner: agent binary ${binary} is missing. Run \`bash hack/build-binaries.sh\`.`);
    const workDir = options.workDir ?? (await mkdtemp(join(tmpdir(), "bkpr-")));
    // `buildkite-agent` on every container's PATH, for scripts that look it up (a copy-agent's `command -v`).
    await mkdir(join(workDir, "bin"), { recursive: true });
    await rm(join(workDir, "bin", "buildkite-agent"), { force: true });
    // The file itself, not a link to it: a copy made with `cp -a` keeps working.
    await symlink(realpathSync(binary), join(workDir, "bin", "buildkite-agent"));
    // A PID namespace needs root (or user namespaces); without one, kill() walks /proc instead.
    const isolated = spawnSync("unshare", [...UNSHARE, "true"]).status === 0;
    const runner = new PodRunner(
      options.kubeConfig,
      options.namespace,
      realpathSync(binary),
      workDir,
      options.workDir === undefined,
      options.maxGraceMs ?? 3_000,
      isolated,
    );
    runner.#schedule(0);
    return runner;
  }

  /** Every pod run so far, oldest first. */
  runs(): PodRun[] {
    return [...this.#runs.values()].map((run) => run.view());
  }

  /** Waits until every container of pod `podName` has exited and the pod's final status is written. */
  async waitForRun(podName: string, timeoutMs = 45_000): Promise<PodRun> {
    return eventually(
      () => {
        const run = [...this.#runs.values()].reverse().find((r) => r.name === podName);
        if (run?.settled === true) return run.view();
        const error = this.#lastError ? `; last error: ${this.#lastError.message}` : "";
        if (!run) throw new Error(`not started${error}`);
        const tails = run.view().containers.map((c) => `--- ${c.name}\n${c.output}`);
        throw new Error(`the pod still runs${error}\n${tails.join("\n")}`);
      },
      { timeoutMs, intervalMs: 50, what: `the pod runner to finish pod ${podName}` },
    );
  }

  /** Stops polling and every container (SIGTERM, SIGKILL after at most 2 s); writes no status after. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#polling;
    await Promise.allSettled(this.#preparing);
    const runs = [...this.#runs.values()];
    for (const run of runs) run.terminate(Math.min(2_000, this.maxGraceMs));
    await Promise.allSettled(runs.map((run) => run.done));
    this.#forgetExitHook();
    if (this.#removeDir()) await rm(this.workDir, { recursive: true, force: true });
  }

  #schedule(delayMs: number): void {
    this.#timer = setTimeout(() => {
      this.#polling = this.#poll().finally(() => {
        if (!this.#stopped) this.#schedule(POLL_MS);
      });
    }, delayMs).unref();
  }

  async #poll(): Promise<void> {
    try {
      const pods = (await this.#core.listNamespacedPod({ namespace: this.namespace })).items.filter(
        (pod) => pod.metadata?.annotations?.[RUNNER_ANNOTATION] === "real",
      );
      const live = new Map(pods.map((pod) => [pod.metadata?.uid ?? "", pod]));
      for (const run of this.#runs.values()) {
        const pod = live.get(run.uid);
        if (run.ended || (pod !== undefined && pod.metadata?.deletionTimestamp === undefined)) continue;
        // A pod already removed (KWOK's pod-delete stage is quick) gets the kubelet's minimum grace period, 2 s.
        run.terminate(this.#graceMs(pod?.metadata?.deletionGracePeriodSeconds));
      }
      for (const pod of pods.filter((p) => runnable(p) && !this.#runs.has(p.metadata?.uid ?? ""))) {
        this.#begin(pod).catch((err: unknown) => {
          this.#lastError = asError(err);
        });
      }
    } catch (err) {
      this.#lastError = asError(err);
    }
  }

  async #begin(pod: V1Pod): Promise<void> {
    const run = new PodExecution(pod, this.isolated);
    const { uid } = run;
    this.#runs.set(uid, run);
    const preparing = this.#prepare(pod, run, join(this.workDir, uid.slice(0, 8)));
    this.#preparing.add(preparing);
    try {
      await preparing;
    } catch (err) {
      // As the kubelet does: report the container (or, for a volume, every container) waiting, and try again.
      setTimeout(() => this.#runs.delete(uid), 1_000).unref();
      if (err instanceof ContainerConfigError) run.setWaiting("CreateContainerConfigError", err.message, err.container);
      else if (err instanceof VolumeError) run.setWaiting("ContainerCreating", err.message);
      else throw err;
      await this.#writeStatus(run);
      throw err;
    } finally {
      this.#preparing.delete(preparing);
    }
    if (this.#stopped) {
      run.settled = true;
      return;
    }
    // The kubelet counts activeDeadlineSeconds from status.startTime: the pod's start here.
    const deadline = pod.spec?.activeDeadlineSeconds;
    const timer =
      deadline === undefined
        ? undefined
        : setTimeout(() => {
            run.deadlineExceeded = true;
            run.terminate(this.#graceMs(pod.spec?.terminationGracePeriodSeconds));
          }, deadline * 1000).unref();
    run.done = run.run(() => {
      this.#publish(run);
    }, this.#graceMs(pod.spec?.terminationGracePeriodSeconds));
    await run.done;
    clearTimeout(timer);
    this.#publish(run);
    await run.writes;
    run.settled = true;
  }

  /** Mounts the pod's volumes and prepares every container's launch, before any starts. */
  async #prepare(pod: V1Pod, run: PodExecution, podDir: string): Promise<void> {
    const keys = apiKeySource(this.#core, this.namespace);
    const token = apiTokenSource(this.#core);
    const volumes = await mountVolumes({ keys, token, podDir, workDir: this.workDir }, pod);
    await mkdir(join(podDir, "hooks"), { recursive: true });
    await writeFile(join(podDir, "agent.cfg"), "");
    const ctx = { podDir, volumes, keys, agentBinary: this.agentBinary, binDir: join(this.workDir, "bin") };
    for (const container of run.containers()) run.setLaunch(await prepareLaunch(ctx, pod, container));
  }

  /** Queues a write of the pod's status as it is now; writes go one at a time, none after stop(). */
  #publish(run: PodExecution): void {
    run.writes = run.writes
      .then(() => (this.#isStopped() ? undefined : this.#writeStatus(run)))
      .catch((err: unknown) => {
        this.#lastError = asError(err);
      });
  }

  /** The runner's own temp directory goes with it, unless BK_KEEP_CLUSTER=1 keeps the containers' logs. */
  #removeDir(): boolean {
    return this.ownDir && process.env.BK_KEEP_CLUSTER !== "1";
  }

  /** A grace period as the kubelet applies it (at least 2 s), capped at maxGraceMs so tests stay quick. */
  #graceMs(seconds = 2): number {
    return Math.min(Math.max(seconds, 2) * 1000, this.maxGraceMs);
  }

  /** A method, not the field: a plain read after an await would be narrowed to the value seen before it. */
  #isStopped(): boolean {
    return this.#stopped;
  }

  /** Writes the run's status over a fresh read of the pod, again on 409; a pod gone or replaced is left be. */
  async #writeStatus(run: PodExecution): Promise<void> {
    const { name, uid } = run;
    for (let attempt = 0; attempt < 10; attempt++) {
      try {
        const pod = await this.#core.readNamespacedPod({ name, namespace: this.namespace });
        if (pod.metadata?.uid !== uid) return;
        Object.assign((pod.status ??= {}), podStatus(pod, run.facts()));
        await this.#core.replaceNamespacedPodStatus({ name, namespace: this.namespace, body: pod });
        return;
      } catch (err) {
        if (isNotFound(err)) return;
        if (!isConflict(err)) throw err;
      }
    }
    throw new Error(`the status of pod ${name} still conflicted after 10 attempts`);
  }
}

const asError = (err: unknown): Error => (err instanceof Error ? err : new Error(String(err)));
