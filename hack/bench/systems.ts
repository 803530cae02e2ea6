import { CoreV1Api, CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createWriteStream, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import type { BuildkiteQueue } from "../../operator/src/api/generated/buildkite-queue.js";
import type { FakeBuildkite } from "../../test/fake-buildkite/server.js";
import { repoRoot } from "../../test/support/binaries.js";
import { FAST_RUNNER } from "../../test/support/fast-pod.js";
import { httpGet } from "../../test/support/https-probe.js";
import { RUNNER_ANNOTATION } from "../../test/support/pod-runner.js";
import { freePort } from "../../test/support/ports.js";
import { startAgentStackK8s } from "./peer-agent-stack-k8s.js";

/** One Buildkite queue of a scenario: its key, shape and how many jobs may run at once. */
export interface BenchQueue {
  key: string;
  shape: BuildkiteQueue["spec"]["instanceShape"];
  slots: number;
  vcpu: number;
}

export interface BenchContext {
  kc: KubeConfig;
  kubeconfigPath: string;
  namespace: string;
  fake: FakeBuildkite;
  queues: readonly BenchQueue[];
  dir: string;
  /**
   * Who runs the pods: the fast runner (to completion; each system's pods are annotated with {@link FAST_POD}), or
   * KWOK alone (Running until the end, for in-flight).
   */
  runnerMode: "fast" | "kwok";
  /** Node.js flags for a system that runs on Node (a CPU profile, a heap snapshot on a signal); files go to `dir`. */
  nodeFlags: readonly string[];
}

/** A running system under test. */
export interface RunningSystem {
  /** The system's processes (their memory and CPU are summed). */
  pids: number[];
  stop(): Promise<void>;
  /** Kubernetes API requests the system made, when it counts them. */
  kubernetesRequests(): Promise<number | undefined>;
  /** V8 heap in use (MB), when the system reports it. */
  heapUsedMb(): Promise<number | undefined>;
  /** Has the system write a heap snapshot (Node.js, started with `--heapsnapshot-signal=SIGUSR2`); its path. */
  heapSnapshot?(): Promise<string>;
}

export interface SystemUnderTest {
  name: string;
  /** Whether the system deletes a job's pod when the job ends (agent-stack-k8s leaves it to its Job's TTL). */
  deletesPods: boolean;
  start(ctx: BenchContext): Promise<RunningSystem>;
}

const GROUP = { group: "buildkite.com", version: "v1alpha1" };

/**
 * The annotation every system's job pods get in the fast runner's rows: the runner then starts them (Running once their
 * env resolves, as a kubelet starts containers only once their Secrets exist) and ends them, and KWOK leaves them.
 * KWOK alone would make a pod Running at once, Secrets or not: this operator may create a job's pod before its token
 * Secret (the kubelet holds the agent in CreateContainerConfigError until it exists), and in a burst of 200 KWOK showed
 * 16% of its pods Running up to 2.8 s before their token Secret existed. Annotating both systems' pods makes them cost
 * the harness the same: two status writes by the runner each, none by KWOK.
 */
export const FAST_POD = { [RUNNER_ANNOTATION]: FAST_RUNNER };

async function waitFor(what: string, timeoutMs: number, check: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`benchmark: timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The Node.js flags the chart gives the operator (its heap limit), so the benchmark runs it as it is deployed. */
function chartNodeFlags(): string[] {
  const values = parse(readFileSync(join(repoRoot, "charts/buildkite-operator/values.yaml"), "utf8")) as {
    heapLimitMiB?: number;
  };
  return values.heapLimitMiB ? [`--max-old-space-size=${String(values.heapLimitMiB)}`] : [];
}

const snapshotsIn = (dir: string): string[] => readdirSync(dir).filter((f) => f.endsWith(".heapsnapshot"));

/** This project's operator, as its own process (so its memory and CPU can be read). */
export const OURS: SystemUnderTest = {
  name: "buildkite-operator",
  deletesPods: true,
  async start(ctx) {
    const core = ctx.kc.makeApiClient(CoreV1Api);
    const custom = ctx.kc.makeApiClient(CustomObjectsApi);
    await core.createNamespacedSecret({
      namespace: ctx.namespace,
      body: {
        metadata: { name: "bk-agent-token", labels: { "buildkite.com/agent-token": "true" } },
        stringData: { token: ctx.fake.agentToken },
      },
    });
    const port = await freePort();
    const log = createWriteStream(join(ctx.dir, "operator.log"));
    const child = spawn(
      "setpriv",
      [
        "--pdeathsig",
        "SIGKILL",
        "--",
        process.execPath,
        ...chartNodeFlags(),
        ...ctx.nodeFlags,
        join(repoRoot, "dist/operator/src/main.js"),
        "--leader-elect=false",
        `--http-port=${port}`,
        "--log-level=warn",
        `--allowed-endpoints=${ctx.fake.agentEndpoint}`,
      ],
      {
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", KUBECONFIG: ctx.kubeconfigPath },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    const exited = once(child, "exit");
    await waitFor(
      "the operator's /readyz",
      60_000,
      async () => (await httpGet(`http://127.0.0.1:${port}/readyz`).catch(() => ({ status: 0 }))).status === 200,
    );
    for (const q of ctx.queues) {
      await custom.createNamespacedCustomObject({
        ...GROUP,
        plural: "buildkitequeues",
        namespace: ctx.namespace,
        body: {
          apiVersion: "buildkite.com/v1alpha1",
          kind: "BuildkiteQueue",
          metadata: { name: q.key },
          spec: {
            queue: q.key,
            endpoint: ctx.fake.agentEndpoint,
            agentTokenSecretRef: { name: "bk-agent-token", key: "token" },
            instanceShape: q.shape,
            maxVCPU: q.slots * q.vcpu,
            jobTTLSecondsAfterFinished: 3600,
            ...(ctx.runnerMode === "fast" ? { podTemplate: { annotations: FAST_POD } } : {}),
          },
        },
      });
    }
    await waitFor("every queue registered with Buildkite", 60_000, async () => {
      const list = (await custom.listNamespacedCustomObject({
        ...GROUP,
        plural: "buildkitequeues",
        namespace: ctx.namespace,
      })) as { items: BuildkiteQueue[] };
      return (
        list.items.length === ctx.queues.length &&
        list.items.every((q) => q.status?.conditions?.some((c) => c.type === "Registered" && c.status === "True"))
      );
    });
    return {
      pids: [child.pid ?? 0],
      async stop() {
        child.kill("SIGTERM");
        await exited;
      },
      async kubernetesRequests() {
        const page = (await httpGet(`http://127.0.0.1:${port}/metrics`)).body;
        return page
          .split("\n")
          .filter((l) => l.startsWith("buildkite_operator_kubernetes_requests_total{"))
          .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
      },
      async heapUsedMb() {
        const page = (await httpGet(`http://127.0.0.1:${port}/metrics`)).body;
        const line = page.split("\n").find((l) => l.startsWith("buildkite_operator_nodejs_heap_size_used_bytes "));
        return line === undefined ? undefined : Number(line.split(" ").at(-1)) / 2 ** 20;
      },
      async heapSnapshot() {
        const before = new Set(snapshotsIn(ctx.dir));
        child.kill("SIGUSR2");
        // V8 writes the snapshot on the main thread: once the file is there and /healthz answers, it is complete.
        let file: string | undefined;
        await waitFor("the operator's heap snapshot", 300_000, async () => {
          file ??= snapshotsIn(ctx.dir).find((f) => !before.has(f));
          return (
            file !== undefined &&
            (await httpGet(`http://127.0.0.1:${port}/healthz`, undefined, 1_000).catch(() => ({ status: 0 })))
              .status === 200
          );
        });
        return join(ctx.dir, file ?? "");
      },
    };
  },
};

/** Buildkite's agent-stack-k8s: one controller process per queue, as it is deployed. */
export const AGENT_STACK_K8S: SystemUnderTest = {
  name: "agent-stack-k8s",
  deletesPods: false,
  async start(ctx) {
    const peers = await Promise.all(
      ctx.queues.map((q) =>
        startAgentStackK8s({
          kubeconfigPath: ctx.kubeconfigPath,
          namespace: ctx.namespace,
          agentEndpoint: ctx.fake.agentEndpoint,
          agentToken: ctx.fake.agentToken,
          queue: q.key,
          maxInFlight: q.slots,
          logFile: join(ctx.dir, `agent-stack-k8s-${q.key}.log`),
          // Its Jobs' pod templates carry the default metadata's annotations.
          ...(ctx.runnerMode === "fast" ? { extraConfig: { "default-metadata": { annotations: FAST_POD } } } : {}),
        }),
      ),
    );
    return {
      pids: peers.map((p) => p.pid),
      async stop() {
        await Promise.all(peers.map((p) => p.stop()));
      },
      kubernetesRequests: () => Promise.resolve(undefined),
      heapUsedMb: () => Promise.resolve(undefined),
    };
  },
};
