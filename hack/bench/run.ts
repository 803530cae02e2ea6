import { CustomObjectsApi } from "@kubernetes/client-node";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { FakeBuildkite } from "../../test/fake-buildkite/server.js";
import { FastRunner } from "../../test/support/fast-runner.js";
import { BarePodClient, postBarePods } from "./bare-pods.js";
import { readHeapSnapshot } from "./heap-snapshot.js";
import { slope } from "./measure.js";
import { cpuProfileIn, heapGrowth, type CpuSummary, type HeapSummary, type Share } from "./profiles.js";
import {
  afterGarbageCollectorSync,
  leftoversAfter,
  p50p95p99,
  requestsPerJob,
  RowMeter,
  withFreshCluster,
  type RowEnv,
} from "./row.js";
import { OURS, type BenchContext, type BenchQueue, type SystemUnderTest } from "./systems.js";
import { stages, type StageRow, type Trace } from "./trace.js";

/** What one scenario asks for. */
export type Scenario =
  | { kind: "burst"; jobs: number }
  | { kind: "steady"; rate: number; seconds: number }
  | { kind: "inflight"; jobs: number };

/** The row of the ceiling: bare pods on the same cluster, no operator. */
export const BARE_PODS = "bare pods (ceiling)";

/** One row of the results. */
export interface Result {
  system: string;
  scenario: string;
  jobs: number;
  seconds: number;
  podsPerSecond: number;
  createdMs: [number, number, number];
  runningMs: [number, number, number];
  maxRssMb: number | undefined;
  heapUsedMb: number | undefined;
  /** CPU of the system's own processes (cores, averaged from the first job to the row's end). */
  cpuCores: number | undefined;
  /**
   * CPU time per job (ms) by process, from the first job until the row has settled (pods deleted): the cluster's
   * components, the system, the benchmark process itself (fake Buildkite, fast runner, watches).
   */
  cpuMsPerJob: Record<string, number>;
  /** The benchmark process's event-loop delay (ms): p50, p99, max. */
  loopDelayMs: [number, number, number];
  buildkiteCallsPerJob: number | undefined;
  /** The requests the system counted itself making (this operator only). */
  kubernetesCallsPerJob: number | undefined;
  /** The API server's count per job, net of the idle cluster's rate: the total and by verb and resource. */
  apiRequestsPerJob: number;
  apiRequests: [string, number][];
  /** With `--by-client`: the same from the API server's audit log, by client (see audit.ts). */
  byClient?: Record<string, Record<string, number>>;
  duplicates: number;
  leftovers: string;
  /** Pods, unfinished BuildkiteJobs and busy slots left, summed; undefined where jobs are held on purpose. */
  leftoverCount: number | undefined;
  stages: StageRow[];
  /** Seconds after the first job was due at which each pod was first seen (for the chart). */
  createdSeconds: number[];
  /**
   * Steady only: jobs seeded but without a pod yet, at most, when the last job was seeded, and how fast that grew
   * while jobs were seeded (least-squares slope, jobs per second).
   */
  backlog?: { max: number; atLastSeed: number; perSecond: number };
  /** In-flight only: the live heap with every job Running and once they are gone, from heap snapshots. */
  heap?: { fullMb: number; emptyMb: number; perJobKb: number; growth: Share[] };
  cpuProfile?: CpuSummary;
  loadAverage: [number, number];
}

/** Options a row runs with. */
export interface RowOptions {
  deadlineMs: number;
  byClient: boolean;
  cpuProfile: boolean;
  heapSnapshots: boolean;
  log: (line: string) => void;
}

function queuesFor(scenario: Scenario): BenchQueue[] {
  if (scenario.kind === "inflight") return [{ key: "held", shape: "LINUX_AMD64_2X4", vcpu: 2, slots: scenario.jobs }];
  return [
    { key: "bench-amd64", shape: "LINUX_AMD64_2X4", vcpu: 2, slots: 500 },
    { key: "bench-arm64", shape: "LINUX_ARM64_4X16", vcpu: 4, slots: 250 },
  ];
}

export const describe = (s: Scenario): string =>
  s.kind === "burst"
    ? `burst of ${String(s.jobs)}`
    : s.kind === "steady"
      ? `steady ${String(s.rate)}/s for ${String(s.seconds)} s`
      : `${String(s.jobs)} in flight`;

const jobCount = (s: Scenario): number => (s.kind === "steady" ? s.rate * s.seconds : s.jobs);
/** When job `i` of the scenario is due, after `start`. */
const dueAt = (s: Scenario, start: number) => (i: number) =>
  s.kind === "steady" ? start + (i * 1000) / s.rate : start;

async function until(what: string, deadline: number, done: () => boolean, tick?: () => void): Promise<void> {
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen in time`);
    tick?.();
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Latency, throughput and trace figures that every row computes the same way from its trace. */
function fromTrace(trace: Trace, due: ReadonlyMap<string, number>, start: number) {
  const created = trace.get("pod created") ?? new Map<string, number>();
  const lags = (m: Map<string, number> | undefined): number[] =>
    [...(m ?? new Map<string, number>())].flatMap(([u, t]) => {
      const d = due.get(u);
      return d === undefined ? [] : [t - d];
    });
  const times = [...due.keys()].flatMap((u) => created.get(u) ?? []);
  const spread = times.length > 1 ? (Math.max(...times) - Math.min(...times)) / 1000 : 0;
  return {
    podsPerSecond: times.length / Math.max(spread, 0.001),
    createdMs: p50p95p99(lags(created)),
    runningMs: p50p95p99(lags(trace.get("Running"))),
    stages: stages(trace, due),
    // Centiseconds: the chart needs no more, and results.json stays small at 10,000 jobs.
    createdSeconds: times.map((t) => Math.round((t - start) / 10) / 100).sort((a, b) => a - b),
  };
}

/**
 * The ceiling row: the scenario's pods as bare pods, POSTed by a minimal client on a fresh cluster with the same
 * nodes; done when every pod is Running, then deleted together. No system, no Buildkite.
 */
export async function runBarePods(scenario: Scenario, opts: RowOptions): Promise<Result> {
  return withFreshCluster(opts.log, opts.byClient, async (env) => {
    const count = jobCount(scenario);
    const client = new BarePodClient(env.cluster, env.namespace);
    try {
      opts.log(`${BARE_PODS}: starting for ${describe(scenario)}`);
      const meter = await RowMeter.start(env, []);
      const start = Date.now() + 100;
      const due = await postBarePods(client, count, dueAt(scenario, start));
      const running = env.watch.trace.get("Running") ?? new Map<string, number>();
      await until(`${BARE_PODS}: every pod Running`, start + opts.deadlineMs, () => running.size >= count);
      const seconds = meter.elapsed();
      await client.deleteAll();
      const deleted = env.watch.trace.get("pod deleted") ?? new Map<string, number>();
      // KWOK removes deleted pods one by one: 10,000 took longer than two minutes.
      const goneMs = Math.max(120_000, count * 50);
      await until(`${BARE_PODS}: every pod gone`, Date.now() + goneMs, () => deleted.size >= count);
      const measured = meter.stopSamplers();
      const requests = requestsPerJob(await meter.requests(), count);
      const byClient = await meter.byClient(count);
      return {
        system: BARE_PODS,
        scenario: describe(scenario),
        jobs: count,
        seconds,
        ...fromTrace(env.watch.trace, due, start),
        maxRssMb: undefined,
        heapUsedMb: undefined,
        cpuCores: undefined,
        cpuMsPerJob: perJobMs(measured.cpuSeconds, count),
        loopDelayMs: measured.loopDelayMs,
        buildkiteCallsPerJob: undefined,
        kubernetesCallsPerJob: undefined,
        apiRequestsPerJob: requests.total,
        apiRequests: requests.byKey,
        ...(byClient ? { byClient } : {}),
        duplicates: [...env.watch.podsPerJob.values()].filter((s) => s.size > 1).length,
        leftovers: `${String(env.watch.current("pods").length)} pods`,
        leftoverCount: env.watch.current("pods").length,
        loadAverage: meter.loadAverage(),
      };
    } finally {
      client.close();
    }
  });
}

/**
 * Runs one scenario against one system on a fresh cluster and fake Buildkite, bounded by `deadlineMs`, and measures
 * it. Pods are completed by the fast runner (the agent's API calls, no process per job), the same for every system.
 */
export async function runScenario(system: SystemUnderTest, scenario: Scenario, opts: RowOptions): Promise<Result> {
  return withFreshCluster(opts.log, opts.byClient, async (env) => {
    const fake = await FakeBuildkite.start();
    let runner: FastRunner | undefined;
    let running: Awaited<ReturnType<SystemUnderTest["start"]>> | undefined;
    const queues = queuesFor(scenario);
    const profileDir = join(env.dir, "cpu");
    try {
      const nodeFlags: string[] = [];
      if (opts.cpuProfile) nodeFlags.push("--cpu-prof", `--cpu-prof-dir=${profileDir}`);
      if (opts.heapSnapshots) nodeFlags.push("--heapsnapshot-signal=SIGUSR2", `--diagnostic-dir=${env.dir}`);
      const ctx: BenchContext = {
        kc: env.kc,
        kubeconfigPath: env.cluster.kubeconfigPath,
        namespace: env.namespace,
        fake,
        queues,
        dir: env.dir,
        runnerMode: scenario.kind === "inflight" ? "kwok" : "fast",
        nodeFlags,
      };
      if (scenario.kind !== "inflight") {
        runner = await FastRunner.start({
          kubeConfig: env.kc,
          namespaces: [env.namespace],
          fakeEndpoint: fake.agentEndpoint,
          // Every system's pods are annotated alike (systems.ts, FAST_POD): the runner starts and ends them all.
          podInformers: new Map([[env.namespace, env.watch.pods]]),
          concurrency: 64,
        });
      }
      opts.log(`${system.name}: starting for ${describe(scenario)}`);
      running = await system.start(ctx);
      await afterGarbageCollectorSync(env);
      const meter = await RowMeter.start(env, running.pids);
      const start = Date.now();
      const seeding = seed(fake, scenario, queues);
      const uuids = seeding.uuids;
      const created = env.watch.trace.get("pod created") ?? new Map<string, number>();
      const backlog = { max: 0, atLastSeed: 0, perSecond: 0 };
      const samples: [number, number][] = [];
      const pending = new Set<string>();
      let seen = 0;
      const target =
        scenario.kind === "inflight"
          ? () => (env.watch.trace.get("Running")?.size ?? 0) >= uuids.length && seeding.done
          : () => {
              for (; seen < uuids.length; seen++) pending.add(uuids[seen] ?? "");
              for (const u of pending) if (fake.jobState(u) === "finished") pending.delete(u);
              return seeding.done && pending.size === 0;
            };
      await until(`${system.name}: ${describe(scenario)}`, start + opts.deadlineMs, target, () => {
        const waiting = uuids.filter((u) => !created.has(u)).length;
        backlog.max = Math.max(backlog.max, waiting);
        if (seeding.done) return;
        backlog.atLastSeed = waiting;
        samples.push([(Date.now() - start) / 1000, waiting]);
      });
      backlog.perSecond = slope(samples);
      const seconds = meter.elapsed();
      const kubeCalls = await running.kubernetesRequests();
      const heapUsedMb = await running.heapUsedMb();
      const left =
        scenario.kind === "inflight"
          ? undefined
          : await leftoversAfter(env, system.deletesPods ? 30_000 : 0, system === OURS);
      const window = meter.elapsed();
      const measured = meter.stopSamplers();
      const requests = requestsPerJob(await meter.requests(), uuids.length);
      const byClient = await meter.byClient(uuids.length);
      const heap = opts.heapSnapshots ? await heapInFlight(env, running, uuids.length) : undefined;
      const { trace, due, buildkiteCalls, acquiredTwice } = fromFake(fake, uuids, env.watch.trace);
      await running.stop();
      running = undefined;
      return {
        system: system.name,
        scenario: describe(scenario),
        jobs: uuids.length,
        seconds,
        ...fromTrace(trace, due, start),
        maxRssMb: measured.systemRssMb,
        heapUsedMb,
        cpuCores: (measured.cpuSeconds.system ?? 0) / window,
        cpuMsPerJob: perJobMs(measured.cpuSeconds, uuids.length),
        loopDelayMs: measured.loopDelayMs,
        buildkiteCallsPerJob: buildkiteCalls / uuids.length,
        kubernetesCallsPerJob: kubeCalls === undefined ? undefined : kubeCalls / uuids.length,
        apiRequestsPerJob: requests.total,
        apiRequests: requests.byKey,
        ...(byClient ? { byClient } : {}),
        duplicates: acquiredTwice + [...env.watch.podsPerJob.values()].filter((s) => s.size > 1).length,
        leftovers: left?.text ?? "n/a (held)",
        leftoverCount: left?.count,
        ...(scenario.kind === "steady" ? { backlog } : {}),
        ...(heap ? { heap } : {}),
        ...(opts.cpuProfile ? profileOf(profileDir) : {}),
        loadAverage: meter.loadAverage(),
      };
    } finally {
      await running?.stop().catch(() => undefined);
      await runner?.stop().catch(() => undefined);
      await fake.stop().catch(() => undefined);
    }
  });
}

const perJobMs = (cpuSeconds: Record<string, number>, jobs: number): Record<string, number> =>
  Object.fromEntries(Object.entries(cpuSeconds).map(([k, v]) => [k, (v * 1000) / Math.max(jobs, 1)]));

function profileOf(dir: string): { cpuProfile?: CpuSummary } {
  mkdirSync(dir, { recursive: true });
  const summary = cpuProfileIn(dir);
  return summary ? { cpuProfile: summary } : {};
}

/**
 * The live heap with every job in flight and again once they are all gone (their BuildkiteJobs deleted, their pods
 * collected): the difference per job is what a job in flight costs, with start-up and compiled code the same in both.
 * Taken after the row's memory was sampled (a snapshot inflates the process's RSS); the files are removed once read.
 */
async function heapInFlight(
  env: RowEnv,
  running: { heapSnapshot?: () => Promise<string> },
  jobs: number,
): Promise<Result["heap"]> {
  if (!running.heapSnapshot) return undefined;
  const full = await read(await running.heapSnapshot());
  await env.kc.makeApiClient(CustomObjectsApi).deleteCollectionNamespacedCustomObject({
    group: "buildkite.com",
    version: "v1alpha1",
    plural: "buildkitejobs",
    namespace: env.namespace,
  });
  await until("every job's BuildkiteJob and pod gone", Date.now() + 600_000, () =>
    ["pods", "records"].every((k) => env.watch.current(k as "pods" | "records").length === 0),
  );
  // The operator's caches see the same deletes a moment later.
  await new Promise((r) => setTimeout(r, 5_000));
  const empty = await read(await running.heapSnapshot());
  return {
    emptyMb: empty.totalBytes / 2 ** 20,
    fullMb: full.totalBytes / 2 ** 20,
    perJobKb: (full.totalBytes - empty.totalBytes) / 1024 / Math.max(jobs, 1),
    growth: heapGrowth(empty, full),
  };
}

async function read(file: string): Promise<HeapSummary> {
  const summary = await readHeapSnapshot(file);
  rmSync(file, { force: true });
  return summary;
}

/** Adds the fake's milestones (listed, reserved, finished) to the watch's trace; counts Stacks API calls and double acquires. */
function fromFake(fake: FakeBuildkite, uuids: readonly string[], watched: Trace) {
  const trace: Trace = new Map([...watched].map(([m, times]) => [m, new Map(times)]));
  const due = new Map<string, number>();
  for (const u of uuids) {
    const job = fake.job(u);
    due.set(u, Date.parse(job.scheduled_at));
    const stamp = (m: "listed" | "reserved" | "finished", at: string | null | undefined): void => {
      if (at) trace.get(m)?.set(u, Date.parse(at));
    };
    stamp("listed", job.listed_at);
    stamp("reserved", job.history.find((h) => h.event === "reserve")?.at);
    stamp("finished", job.finished_at);
  }
  const acquires = new Map<string, number>();
  let buildkiteCalls = 0;
  for (const r of fake.requests()) {
    if (r.route?.startsWith("stacks.") === true) buildkiteCalls++;
    if (r.route === "agent.acquire" && r.status < 300) {
      const uuid = /jobs\/([^/]+)\/acquire/.exec(r.path)?.[1] ?? "";
      acquires.set(uuid, (acquires.get(uuid) ?? 0) + 1);
    }
  }
  return { trace, due, buildkiteCalls, acquiredTwice: [...acquires.values()].filter((n) => n > 1).length };
}

/** Seeds the scenario's jobs across its queues, a steady scenario's at its rate; `uuids` fills as it goes. */
function seed(
  fake: FakeBuildkite,
  scenario: Scenario,
  queues: readonly BenchQueue[],
): { uuids: string[]; done: boolean } {
  const state = { uuids: [] as string[], done: false };
  const one = (i: number): void => {
    const q = queues[i % queues.length];
    if (q) state.uuids.push(fake.seedJob({ queue_key: q.key, command: "true", priority: i % 3 }));
  };
  const total = jobCount(scenario);
  if (scenario.kind !== "steady") {
    for (let i = 0; i < total; i++) one(i);
    state.done = true;
    return state;
  }
  const at = dueAt(scenario, Date.now());
  void (async () => {
    for (let i = 0; i < total; i++) {
      const wait = at(i) - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      one(i);
    }
    state.done = true;
  })();
  return state;
}
