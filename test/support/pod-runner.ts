import {
  CoreV1Api,
  type KubeConfig,
  type V1Container,
  type V1Pod,
  type V1PodStatus,
  type V1Volume,
} from "@kubernetes/client-node";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { constants, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { isConflict, isNotFound } from "../../operator/src/kube/field-manager.js";
import { hackBinary } from "./binaries.js";
import {
  acquiredJob,
  containerStatus,
  expand,
  resolveEnv,
  runnable,
  setRunning,
  setTerminated,
} from "./kubelet-env.js";
import { eventually } from "./eventually.js";
import { descendants, onExit } from "./managed-process.js";

/** Pods annotated `kwok.test/runner: real` are run by {@link PodRunner}; KWOK's stages skip any pod with this key. */
export const RUNNER_ANNOTATION = "kwok.test/runner";
const POLL_MS = 200;
/** unshare's arguments for a PID namespace that dies with the process started in it (its init). */
const UNSHARE = ["--pid", "--fork", "--kill-child", "--"];
const TAIL_LINES = 40;

/** Options for {@link PodRunner.start}. */
export interface PodRunnerOptions {
  readonly kubeConfig: KubeConfig;
  /** The one namespace whose pods are run. */
  readonly namespace: string;
  /** What `buildkite-agent` in a container's command means here (default `hack/bin/buildkite-agent`). */
  readonly agentBinary?: string;
  /** Where pod directories go (default a fresh short temp dir, removed by stop()). Short: the agent puts sockets under HOME. */
  readonly workDir?: string;
  /** Cap on a pod's termination grace period before SIGKILL (default 3 s). */
  readonly maxGraceMs?: number;
}

/** What the runner did with one pod. */
export interface PodRun {
  readonly name: string;
  readonly uid: string;
  /** The Buildkite job the agent was told to acquire (`--acquire-job`). */
  readonly uuid: string | undefined;
  readonly startedAt: Date;
  readonly finishedAt: Date | undefined;
  readonly exitCode: number | undefined;
  /** The container's termination reason (Completed, Error, StartError), or the pod's DeadlineExceeded. */
  readonly reason: string | undefined;
  /** The agent's last output lines. */
  readonly output: string;
}

/** One pod's agent process, from its start to the final status write. */
class Run {
  readonly tail: string[] = [];
  /** When the agent was started (status.startTime). */
  startedAt = new Date();
  child: ChildProcess | undefined;
  /** Resolves once the agent has exited and its output is drained, or it could not be started. */
  closed: Promise<void> = Promise.resolve();
  finishedAt: Date | undefined;
  exitCode: number | undefined;
  reason: string | undefined;
  deadlineExceeded = false;
  /** Set once the final status is written (or cannot be: the pod is gone). */
  settled = false;
  #killTimer: NodeJS.Timeout | undefined;

  /** `isolated`: the agent runs in a PID namespace of its own, whose every process the kernel ends with it. */
  constructor(
    readonly name: string,
    readonly uid: string,
    readonly uuid: string | undefined,
    private readonly isolated: boolean,
  ) {}

  get running(): boolean {
    return this.child !== undefined && this.exitCode === undefined;
  }

  /** As the kubelet stops a container: SIGTERM, then SIGKILL after `graceMs`. */
  terminate(graceMs: number): void {
    const pid = this.child?.pid;
    if (!this.running || this.#killTimer || pid === undefined) return;
    // To the process group: the agent, and unshare (which passes the exit status on) when it wraps the agent.
    try {
      process.kill(-pid, "SIGTERM");
    } catch {
      /* exited; its exit event is on its way */
    }
    this.#killTimer = setTimeout(() => {
      this.kill();
    }, graceMs).unref();
  }

  /**
   * SIGKILL to the agent and all below it. The bootstrap and the job's commands run in process groups of their own
   * and have no parent-death signal: without a PID namespace to end them, they are found in /proc.
   */
  kill(): void {
    const pid = this.child?.pid;
    if (!this.running || pid === undefined) return;
    const orphans = this.isolated ? [] : descendants(pid);
    for (const target of [-pid, ...orphans]) {
      try {
        process.kill(target, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
  }

  exited(code: number | null, signal: NodeJS.Signals | null): void {
    clearTimeout(this.#killTimer);
    this.finishedAt = new Date();
    // A container killed by a signal reports 128 + its number, as container runtimes do.
    this.exitCode ??= code ?? 128 + (signal ? constants.signals[signal] : 0);
    this.reason ??= this.exitCode === 0 ? "Completed" : "Error";
  }

  view(): PodRun {
    const { name, uid, uuid, startedAt, finishedAt, exitCode } = this;
    const reason = this.deadlineExceeded ? "DeadlineExceeded" : this.reason;
    return { name, uid, uuid, startedAt, finishedAt, exitCode, reason, output: this.tail.join("\n") };
  }
}

/**
 * Plays kubelet for the pods of one namespace annotated `kwok.test/runner: real`: once the scheduler binds such a
 * pod, it resolves the container's environment as the kubelet does, runs the container's command with the real
 * buildkite-agent on this machine, and writes the pod's status (Running, then Succeeded or Failed with the agent's
 * exit code). It polls rather than watches: a level-based loop that cannot die silently, quick enough for tests.
 */
export class PodRunner {
  readonly #core: CoreV1Api;
  readonly #runs = new Map<string, Run>();
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
    // An interrupted test run kills every agent and removes the directory; setpriv --pdeathsig covers a runner
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
    // A PID namespace needs root (or user namespaces); without one, kill() walks /proc instead.
    const isolated = spawnSync("unshare", [...UNSHARE, "true"]).status === 0;
    const runner = new PodRunner(
      options.kubeConfig,
      options.namespace,
      binary,
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

  /** Waits until the agent of pod `podName` has exited and the pod's final status is written. */
  async waitForRun(podName: string, timeoutMs = 45_000): Promise<PodRun> {
    return eventually(
      () => {
        const run = [...this.#runs.values()].reverse().find((r) => r.name === podName);
        if (run?.settled === true) return run.view();
        const error = this.#lastError ? `; last error: ${this.#lastError.message}` : "";
        throw new Error(run ? `the agent still runs${error}\n${run.tail.join("\n")}` : `not started${error}`);
      },
      { timeoutMs, intervalMs: 50, what: `the pod runner to finish pod ${podName}` },
    );
  }

  /** Stops polling and every agent (SIGTERM, SIGKILL after at most 2 s); writes no status after. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#polling;
    await Promise.allSettled(this.#preparing);
    const running = [...this.#runs.values()].filter((run) => run.running);
    for (const run of running) run.terminate(Math.min(2_000, this.maxGraceMs));
    await Promise.all(running.map((run) => run.closed));
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
        if (pod?.metadata?.deletionTimestamp === undefined && pod !== undefined) continue;
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
    const { name = "", uid = "" } = pod.metadata ?? {};
    const container = pod.spec?.containers.find((c) => c.name === "agent") ?? pod.spec?.containers[0];
    if (!container) throw new Error(`pod ${name} has no container`);
    const run = new Run(name, uid, acquiredJob(container), this.isolated);
    this.#runs.set(uid, run);
    const preparing = this.#prepare(pod, container, join(this.workDir, uid.slice(0, 8)));
    this.#preparing.add(preparing);
    let launch: Launch;
    try {
      launch = await preparing;
    } catch (err) {
      // As the kubelet does: report CreateContainerConfigError and try again (a Secret may not exist yet).
      setTimeout(() => this.#runs.delete(uid), 1_000).unref();
      const waiting = { reason: "CreateContainerConfigError", message: asError(err).message };
      await this.#writeStatus(name, uid, (status) => {
        status.containerStatuses = [containerStatus(container, { waiting })];
      });
      throw err;
    } finally {
      this.#preparing.delete(preparing);
    }
    if (this.#stopped) return;
    this.#spawn(run, launch);
    // The kubelet counts activeDeadlineSeconds from status.startTime: the agent's start here.
    const deadline = pod.spec?.activeDeadlineSeconds;
    const timer =
      deadline === undefined
        ? undefined
        : setTimeout(() => {
            run.deadlineExceeded = true;
            run.terminate(this.#graceMs(pod.spec?.terminationGracePeriodSeconds));
          }, deadline * 1000).unref();
    await this.#writeStatus(name, uid, (status) => {
      setRunning(status, container, run);
    });
    await run.closed;
    clearTimeout(timer);
    if (!this.#isStopped())
      await this.#writeStatus(name, uid, (status) => {
        setTerminated(status, container, run);
      });
    run.settled = true;
  }

  /** The runner's own temp directory goes with it, unless BK_KEEP_CLUSTER=1 keeps the agents' logs. */
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

  /** The container's environment, argv and working directory, with its volumes' paths moved into `podDir`. */
  async #prepare(pod: V1Pod, container: V1Container, podDir: string): Promise<Launch> {
    const roots: [string, string][] = [];
    for (const mount of container.volumeMounts ?? []) {
      const volume = pod.spec?.volumes?.find((v) => v.name === mount.name);
      if (!volume) throw new Error(`volume ${mount.name} of mount ${mount.mountPath} is not in the pod`);
      roots.push([mount.mountPath, join(await this.#volume(pod, volume, podDir), mount.subPath ?? "")]);
    }
    const workingDir = container.workingDir ?? "/";
    if (workingDir !== "/" && !roots.some(([root]) => under(workingDir, root)))
      roots.push([workingDir, join(podDir, "workdir")]);
    roots.sort((a, b) => b[0].length - a[0].length);
    const toHost = (value: string): string => {
      const [root, dir] = roots.find(([r]) => under(value, r)) ?? [];
      return root === undefined || dir === undefined ? value : dir + value.slice(root.length);
    };
    const vars = await resolveEnv(this.#core, pod, container);
    const argv = [...(container.command ?? ["buildkite-agent"]), ...(container.args ?? [])].map((a) =>
      toHost(expand(a, vars)),
    );
    const cwd = workingDir === "/" ? join(podDir, "workdir") : toHost(workingDir);
    const config = join(podDir, "agent.cfg");
    // What the agent's image would provide; the pod's own environment goes over it, as a container's env does.
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
      HOME: join(podDir, "home"),
      // An empty config keeps a machine-wide /etc/buildkite-agent/buildkite-agent.cfg out of the test.
      BUILDKITE_AGENT_CONFIG: config,
      BUILDKITE_HOOKS_PATH: join(podDir, "hooks"),
      // The fake's repository URL does not exist; the bootstrap's documented switch skips the checkout.
      BUILDKITE_SKIP_CHECKOUT: "true",
      // No gRPC streaming attempt against a fake that speaks only the polling API.
      BUILDKITE_AGENT_PING_MODE: "poll-only",
      BUILDKITE_AGENT_NO_COLOR: "true",
    };
    for (const [key, value] of vars) env[key] = toHost(value);
    for (const dir of [cwd, env.HOME ?? podDir, join(podDir, "hooks")]) await mkdir(dir, { recursive: true });
    await writeFile(config, "");
    const [command = "", ...args] = argv;
    return {
      binary: command === "buildkite-agent" ? this.agentBinary : command,
      args,
      env,
      cwd,
      logFile: join(podDir, "agent.log"),
    };
  }

  /** The host directory of a volume: one per pod for emptyDir, one per claim for a PVC (kept across pods). */
  async #volume(pod: V1Pod, volume: V1Volume, podDir: string): Promise<string> {
    const claim = volume.persistentVolumeClaim?.claimName;
    const dir = claim === undefined ? join(podDir, "v", volume.name) : join(this.workDir, "pvc", claim);
    await mkdir(dir, { recursive: true });
    if (volume.emptyDir || claim !== undefined) return dir;
    const sources = volume.projected?.sources ?? [];
    if (sources.length === 0 || sources.some((s) => !s.serviceAccountToken))
      throw new Error(`volume ${volume.name}: only emptyDir, PVC and projected ServiceAccount tokens are supported`);
    for (const { serviceAccountToken: source } of sources) {
      if (!source) continue;
      // As the kubelet does for a projected token: a TokenRequest bound to the pod, written to the file.
      const request = await this.#core.createNamespacedServiceAccountToken({
        name: pod.spec?.serviceAccountName ?? "default",
        namespace: this.namespace,
        body: {
          spec: {
            audiences: source.audience === undefined ? [] : [source.audience],
            expirationSeconds: source.expirationSeconds ?? 3600,
            boundObjectRef: {
              apiVersion: "v1",
              kind: "Pod",
              name: pod.metadata?.name ?? "",
              uid: pod.metadata?.uid ?? "",
            },
          },
        },
      });
      await mkdir(dirname(join(dir, source.path)), { recursive: true });
      await writeFile(join(dir, source.path), request.status?.token ?? "", { mode: 0o600 });
    }
    return dir;
  }

  #spawn(run: Run, launch: Launch): void {
    const log = createWriteStream(launch.logFile, { flags: "a" });
    // setpriv --pdeathsig: the kernel kills the agent if the test runner dies without cleaning up; in a PID namespace
    // (unshare --kill-child) it then ends the job's processes too. Detached: a process group of its own to signal.
    const argv = [...(this.isolated ? ["unshare", ...UNSHARE] : []), launch.binary, ...launch.args];
    const child = spawn("setpriv", ["--pdeathsig", "SIGKILL", "--", ...argv], {
      env: launch.env,
      cwd: launch.cwd,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    run.child = child;
    run.startedAt = new Date();
    const keep = (chunk: Buffer): void => {
      log.write(chunk);
      run.tail.push(
        ...chunk
          .toString("utf8")
          .split("\n")
          .filter((l) => l.length > 0),
      );
      run.tail.splice(0, Math.max(0, run.tail.length - TAIL_LINES));
    };
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    child.on("exit", (code, signal) => {
      run.exited(code, signal);
    });
    run.closed = new Promise((resolve) => {
      const done = (): void => {
        if (!log.writableEnded) log.end();
        resolve();
      };
      child.on("close", done);
      child.on("error", (err) => {
        // What a container runtime reports for a command it cannot start.
        run.tail.push(`spawn failed: ${err.message}`);
        run.exitCode = 128;
        run.reason = "StartError";
        run.exited(null, null);
        done();
      });
    });
  }

  /** Updates the status of a fresh read of the pod and replaces it, again on 409; a pod gone or replaced is left be. */
  async #writeStatus(name: string, uid: string, update: (status: V1PodStatus) => void): Promise<void> {
    for (let attempt = 0; attempt < 10; attempt++) {
      try {
        const pod = await this.#core.readNamespacedPod({ name, namespace: this.namespace });
        if (pod.metadata?.uid !== uid) return;
        update((pod.status ??= {}));
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

interface Launch {
  binary: string;
  args: string[];
  env: Record<string, string>;
  cwd: string;
  logFile: string;
}

const asError = (err: unknown): Error => (err instanceof Error ? err : new Error(String(err)));

const under = (path: string, root: string): boolean =>
  path === root || path.startsWith(root.endsWith("/") ? root : `${root}/`);
