import { CoreV1Api, CustomObjectsApi } from "@kubernetes/client-node";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BuildkiteJob } from "../../operator/src/api/generated/buildkite-job.js";
import { FakeBuildkite } from "../../test/fake-buildkite/server.js";
import { LocalCluster } from "../../test/support/cluster.js";
import { installCrds } from "../../test/support/crds.js";
import { FastRunner } from "../../test/support/fast-runner.js";
import type { NodePoolSpec } from "../../test/support/nodes.js";
import { percentile, ProcessSampler, watchPods } from "./measure.js";
import type { BenchContext, BenchQueue, SystemUnderTest } from "./systems.js";

/** What one scenario asks for. */
export type Scenario =
  | { kind: "burst"; jobs: number }
  | { kind: "steady"; rate: number; seconds: number }
  | { kind: "inflight"; jobs: number };

/** One row of the results table. */
export interface Result {
  system: string;
  scenario: string;
  jobs: number;
  seconds: number;
  podsPerSecond: number;
  createdMs: [number, number, number];
  runningMs: [number, number, number];
  maxRssMb: number;
  heapUsedMb: number | undefined;
  cpuCores: number;
  buildkiteCallsPerJob: number;
  kubernetesCallsPerJob: number | undefined;
  duplicates: number;
  leftovers: string;
}

/** Plenty of room: 40 nodes (20 per architecture) of 256 vCPU, 1 TiB, 250 pods — 10,000 pods in all. */
const BENCH_NODES: NodePoolSpec[] = [
  { arch: "amd64", count: 20, cpu: "256", memory: "1Ti", ephemeralStorage: "20T", pods: "250" },
  { arch: "arm64", count: 20, cpu: "256", memory: "1Ti", ephemeralStorage: "20T", pods: "250" },
];

function queuesFor(scenario: Scenario): BenchQueue[] {
  if (scenario.kind === "inflight") return [{ key: "held", shape: "LINUX_AMD64_2X4", vcpu: 2, slots: scenario.jobs }];
  return [
    { key: "bench-amd64", shape: "LINUX_AMD64_2X4", vcpu: 2, slots: 500 },
    { key: "bench-arm64", shape: "LINUX_ARM64_4X16", vcpu: 4, slots: 250 },
  ];
}

const describe = (s: Scenario): string =>
  s.kind === "burst"
    ? `burst of ${s.jobs}`
    : s.kind === "steady"
      ? `steady ${s.rate}/s for ${s.seconds} s`
      : `${s.jobs} in flight`;

/**
 * Runs one scenario against one system on a fresh cluster and fake Buildkite, bounded by `deadlineMs`, and measures
 * it. Pods are completed by the fast runner (the agent's API calls, no process per job), the same for every system.
 */
export async function runScenario(
  system: SystemUnderTest,
  scenario: Scenario,
  deadlineMs: number,
  log: (line: string) => void,
): Promise<Result> {
  const dir = await mkdtemp(join(tmpdir(), "bk-bench-"));
  const cluster = await LocalCluster.start({ nodePools: BENCH_NODES, log });
  const kc = cluster.kubeConfig();
  const fake = await FakeBuildkite.start();
  const namespace = "bench";
  let runner: FastRunner | undefined;
  let pods: Awaited<ReturnType<typeof watchPods>> | undefined;
  let running: Awaited<ReturnType<SystemUnderTest["start"]>> | undefined;
  try {
    await installCrds(kc);
    const core = kc.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    const queues = queuesFor(scenario);
    const ctx: BenchContext = {
      kc,
      kubeconfigPath: cluster.kubeconfigPath,
      namespace,
      fake,
      queues,
      dir,
      runnerMode: scenario.kind === "inflight" ? "kwok" : "fast",
    };
    const watched = await watchPods(kc, namespace, () => core.listNamespacedPod({ namespace }));
    pods = watched;
    if (scenario.kind !== "inflight") {
      runner = await FastRunner.start({
        kubeConfig: kc,
        namespaces: [namespace],
        fakeEndpoint: fake.agentEndpoint,
        adoptAll: system.adoptPods,
        concurrency: 64,
      });
    }
    log(`${system.name}: starting for ${describe(scenario)}`);
    running = await system.start(ctx);
    const sampler = new ProcessSampler(running.pids);
    const started = Date.now();
    const uuids = await seed(fake, scenario, queues);
    const deadline = started + deadlineMs;
    const target =
      scenario.kind === "inflight"
        ? () => watched.times.running.size >= uuids.length
        : () => uuids.every((u) => fake.job(u).state === "finished");
    while (!target()) {
      if (Date.now() > deadline)
        throw new Error(
          `${system.name}: ${describe(scenario)} did not complete within ${deadlineMs / 1000} s (${watched.times.created.size} pods created, ${uuids.filter((u) => fake.job(u).state === "finished").length} finished)`,
        );
      await new Promise((r) => setTimeout(r, 250));
    }
    const seconds = (Date.now() - started) / 1000;
    const usage = sampler.stop();
    const kubeCalls = await running.kubernetesRequests();
    const heapUsedMb = await running.heapUsedMb();
    const createdTimes = uuids.map((u) => watched.times.created.get(u)).filter((t) => t !== undefined);
    const lags = (times: Map<string, number>): number[] =>
      uuids.flatMap((u) => {
        const at = times.get(u);
        return at === undefined ? [] : [at - Date.parse(fake.job(u).scheduled_at)];
      });
    const created = lags(watched.times.created);
    const runningLags = lags(watched.times.running);
    const acquires = new Map<string, number>();
    let buildkiteCalls = 0;
    for (const r of fake.requests()) {
      if (r.route?.startsWith("stacks.") === true) buildkiteCalls++;
      if (r.route === "agent.acquire" && r.status < 300) {
        const uuid = /jobs\/([^/]+)\/acquire/.exec(r.path)?.[1] ?? "";
        acquires.set(uuid, (acquires.get(uuid) ?? 0) + 1);
      }
    }
    const duplicates =
      [...acquires.values()].filter((n) => n > 1).length +
      [...watched.times.podsPerJob.values()].filter((s) => s.size > 1).length;
    const leftovers = scenario.kind === "inflight" ? "n/a (held)" : await leftoversAfter(kc, namespace, 30_000);
    const spread = createdTimes.length > 1 ? (Math.max(...createdTimes) - Math.min(...createdTimes)) / 1000 : seconds;
    return {
      system: system.name,
      scenario: describe(scenario),
      jobs: uuids.length,
      seconds,
      podsPerSecond: createdTimes.length / Math.max(spread, 0.001),
      createdMs: [percentile(created, 50), percentile(created, 95), percentile(created, 99)],
      runningMs: [percentile(runningLags, 50), percentile(runningLags, 95), percentile(runningLags, 99)],
      maxRssMb: usage.maxRssMb,
      heapUsedMb,
      cpuCores: usage.cpuCores,
      buildkiteCallsPerJob: buildkiteCalls / uuids.length,
      kubernetesCallsPerJob: kubeCalls === undefined ? undefined : kubeCalls / uuids.length,
      duplicates,
      leftovers,
    };
  } finally {
    await pods?.stop().catch(() => undefined);
    await running?.stop().catch(() => undefined);
    await runner?.stop().catch(() => undefined);
    await fake.stop().catch(() => undefined);
    await cluster.stop();
  }
}

/** Seeds the scenario's jobs across its queues; a steady scenario seeds them at its rate. Returns their uuids. */
async function seed(fake: FakeBuildkite, scenario: Scenario, queues: readonly BenchQueue[]): Promise<string[]> {
  const uuids: string[] = [];
  const one = (i: number): void => {
    const q = queues[i % queues.length];
    if (q) uuids.push(fake.seedJob({ queue_key: q.key, command: "true", priority: i % 3 }));
  };
  if (scenario.kind !== "steady") {
    for (let i = 0; i < scenario.jobs; i++) one(i);
    return uuids;
  }
  const total = scenario.rate * scenario.seconds;
  const start = Date.now();
  for (let i = 0; i < total; i++) {
    const due = start + (i * 1000) / scenario.rate;
    if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
    one(i);
  }
  return uuids;
}

/** What is left in the namespace after the jobs ended: pods, unfinished BuildkiteJobs. */
async function leftoversAfter(
  kc: ReturnType<LocalCluster["kubeConfig"]>,
  namespace: string,
  graceMs: number,
): Promise<string> {
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const deadline = Date.now() + graceMs;
  for (;;) {
    const pods = (await core.listNamespacedPod({ namespace })).items.length;
    const jobs = (
      (await custom.listNamespacedCustomObject({
        group: "buildkite.com",
        version: "v1alpha1",
        plural: "buildkitejobs",
        namespace,
      })) as { items: BuildkiteJob[] }
    ).items;
    const unfinished = jobs.filter(
      (j) => !["Succeeded", "Failed", "Canceled", "TimedOut"].includes(j.status?.phase ?? ""),
    ).length;
    if ((pods === 0 && unfinished === 0) || Date.now() > deadline)
      return `${pods} pods, ${unfinished} unfinished BuildkiteJobs`;
    await new Promise((r) => setTimeout(r, 500));
  }
}
