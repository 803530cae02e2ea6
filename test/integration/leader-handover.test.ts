import { CoordinationV1Api, type V1Lease } from "@kubernetes/client-node";
import { expect } from "chai";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { LABELS } from "../../operator/src/api/keys.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { FastRunner } from "../support/fast-runner.js";
import { testCluster } from "../support/global-cluster.js";
import { httpGet } from "../support/https-probe.js";
import { OperatorProcess } from "../support/operator-process.js";
import { freePort } from "../support/ports.js";
import { RecordingProxy, type ProxiedRequest } from "../support/recording-proxy.js";

/** Long enough that a loaded CI machine renews in time (a renewal may take up to a third of it). */
const LEASE_MS = 10_000;
/** The elector's retry period: the lease ÷ 7.5, as client-go's defaults (15 s, 2 s). */
const RETRY_MS = LEASE_MS / 7.5;
/**
 * Room for the Lease requests (the standby counts from when its read of the last renewal returns) and for late timers
 * on a loaded two-CPU machine.
 */
const LATENCY_MS = 1_500;
const QUEUE = "handover";
const JOBS = 300;
/** LINUX_AMD64_2X4 is 2 vCPU: 20 ÷ 2 = 10 jobs at once. */
const MAX_VCPU = 20;
const CONCURRENCY = 10;
const TERMINAL = ["Succeeded", "Failed", "Canceled", "TimedOut"];

/** Runs `sample` again and again, one after the other, until stopped. */
function sampling(sample: () => Promise<void>): { stop(): Promise<void> } {
  const state = { stopped: false };
  const loop = (async () => {
    while (!state.stopped) {
      await sample();
      // A cadence for sampling, not a wait for an outcome.
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  return {
    stop: async () => {
      state.stopped = true;
      await loop;
    },
  };
}

/** Kubernetes writes (anything but GET) among `requests`, except to the leader Lease. */
const kubernetesWrites = (requests: readonly ProxiedRequest[]): string[] =>
  requests
    .filter((r) => r.to === "kubernetes" && r.method !== "GET" && !r.path.includes("/leases/"))
    .map((r) => `${r.method} ${r.path}`);
/** Buildkite reservations (and their extensions) among `requests`, sent by `pid` or by anyone but `pid`. */
const reservations = (requests: readonly ProxiedRequest[], by: { pid: number } | { notPid: number }): string[] =>
  requests
    .filter(
      (r) =>
        r.to === "buildkite" &&
        r.path.endsWith("/batch-reserve") &&
        ("pid" in by ? r.pid === by.pid : r.pid !== by.notPid),
    )
    .map((r) => `${r.method} ${r.path} from ${String(r.pid)}`);

/**
 * Issue 13, "two leaders" and "leader handover under load": the leader is paused (SIGSTOP) for longer than its lease
 * while jobs flow; the standby takes over within the lease, the old leader wakes up, steps down without a single
 * write, and no slot and no job is ever doubled.
 */
describe("Leader handover: a leader paused past its lease hands over under load without doubling any work", function () {
  this.timeout(300_000);
  let s: BuildkiteScenario;
  let runner: FastRunner;
  let proxy: RecordingProxy;
  const processes: OperatorProcess[] = [];

  before(async () => {
    s = await BuildkiteScenario.start(testCluster().kubeConfig(), "bk-handover");
    runner = await FastRunner.start({
      kubeConfig: s.kc,
      namespaces: [s.t.namespace],
      fakeEndpoint: s.fake.agentEndpoint,
      durationMs: 200,
    });
    proxy = await RecordingProxy.start(testCluster(), "leader-a", s.fake.url);
  });
  after(async () => {
    for (const p of processes) if (p.running) process.kill(p.pid, "SIGCONT");
    await Promise.all(processes.map((p) => p.stop()));
    await proxy.stop();
    await runner.stop();
    await s.stop();
  });

  const start = async (name: string, env: Record<string, string> = {}): Promise<OperatorProcess> => {
    const port = await freePort();
    const proc = OperatorProcess.start(
      name,
      [
        "--leader-elect=true",
        `--lease-namespace=${s.t.namespace}`,
        `--lease-duration-seconds=${LEASE_MS / 1000}`,
        "--poll-interval-ms=250",
        "--state-check-interval-ms=500",
        "--reservation-expiry-seconds=20",
        `--http-port=${port}`,
        `--allowed-endpoints=${proxy.buildkiteEndpoint}`,
      ],
      { POD_NAME: name, ...env },
    );
    processes.push(proc);
    proxy.watch(proc.pid);
    await eventually(
      async () => {
        expect((await httpGet(`http://127.0.0.1:${port}/readyz`)).status).to.equal(200);
      },
      { what: `${name} ready` },
    );
    return proc;
  };

  it("the standby takes over within the lease; the woken leader writes and reserves nothing; no slot or job is doubled", async () => {
    const leases = testCluster().kubeConfig().makeApiClient(CoordinationV1Api);
    const readLease = (): Promise<V1Lease> =>
      leases.readNamespacedLease({ name: "buildkite-operator", namespace: s.t.namespace });
    const a = await start("leader-a", { KUBECONFIG: proxy.kubeconfigPath });
    await eventually(
      async () => {
        expect((await readLease()).spec?.holderIdentity).to.equal("leader-a");
      },
      { what: "leader-a to lead" },
    );
    const b = await start("leader-b");
    await s.queue(QUEUE, "fast", {
      instanceShape: "LINUX_AMD64_2X4",
      maxVCPU: MAX_VCPU,
      endpoint: proxy.buildkiteEndpoint,
    });
    const uuids = Array.from({ length: JOBS }, (_, i) =>
      s.fake.seedJob({ queue_key: QUEUE, command: "true", priority: i % 3 }),
    );
    const finished = (): number => uuids.filter((u) => s.fake.job(u).state === "finished").length;

    // Throughout the run: the pods of the queue never outnumber its slots, no two hold the same slot, and the last
    // renewal each holder wrote into the Lease.
    const violations: string[] = [];
    let pausedAt: number | undefined;
    const lastRenew = new Map<string, number>();
    let samples = 0;
    const watch = sampling(async () => {
      const [pods, lease] = await Promise.all([
        s.t.core.listNamespacedPod({ namespace: s.t.namespace, labelSelector: `${LABELS.queue}=${QUEUE}` }),
        readLease(),
      ]);
      // Read after the pods: a job's slot, once recorded, never changes; one not recorded yet is not counted.
      const jobs = await Promise.all(pods.items.map((p) => s.t.job(p.metadata?.labels?.[LABELS.job] ?? "")));
      const slots = jobs.map((j) => j?.status?.slot).filter((slot) => slot !== undefined);
      const when = pausedAt === undefined ? "before the pause" : `${Date.now() - pausedAt} ms after the pause`;
      const held = jobs.map((j) => `${j?.metadata.name ?? "?"}@${String(j?.status?.slot)}`).join(", ");
      if (pods.items.length > CONCURRENCY) violations.push(`${when}: ${pods.items.length} pods: ${held}`);
      if (new Set(slots).size !== slots.length) violations.push(`${when}: pods share a slot: ${held}`);
      const holder = lease.spec?.holderIdentity ?? "";
      const renewed = new Date(String(lease.spec?.renewTime)).getTime();
      lastRenew.set(holder, Math.max(lastRenew.get(holder) ?? 0, renewed));
      samples++;
    });

    try {
      await eventually(
        () => {
          expect(finished()).to.be.at.least(60);
          return Promise.resolve();
        },
        { what: "60 jobs finished under leader-a", timeoutMs: 120_000 },
      );
      process.kill(a.pid, "SIGSTOP");
      pausedAt = Date.now();
      const paused = pausedAt;
      const taken = await eventually(
        async () => {
          const lease = await readLease();
          expect(lease.spec?.holderIdentity).to.equal("leader-b");
          return lease;
        },
        { what: "leader-b to take the Lease", timeoutMs: 3 * LEASE_MS },
      );
      const acquiredAt = new Date(String(taken.spec?.acquireTime)).getTime();
      const takeoverMs = acquiredAt - (lastRenew.get("leader-a") ?? 0);
      expect(takeoverMs, "from leader-a's last renewal to leader-b's acquisition (ms)").to.be.within(
        LEASE_MS,
        LEASE_MS + RETRY_MS + LATENCY_MS,
      );
      // Paused for longer than the lease, and the new leader well under way meanwhile.
      const atTakeover = finished();
      await eventually(
        () => {
          expect(finished(), "jobs finished under leader-b").to.be.at.least(atTakeover + 10);
          expect(Date.now() - paused, "the pause (ms)").to.be.above(LEASE_MS);
          return Promise.resolve();
        },
        { what: "leader-b to run jobs while leader-a sleeps", timeoutMs: 60_000 },
      );

      const resumedAt = Date.now();
      process.kill(a.pid, "SIGCONT");
      await eventually(
        () => {
          expect(a.running, "leader-a").to.equal(false);
          return Promise.resolve();
        },
        { what: "the woken leader-a to step down and exit", timeoutMs: 10_000 },
      );
      console.log(
        `      leader-b took the Lease ${takeoverMs} ms after leader-a's last renewal; leader-a exited within ${Date.now() - resumedAt} ms of waking`,
      );
      const log = await readFile(join(testCluster().dir, "operator-leader-a.log"), "utf8");
      expect(log, "leader-a's log").to.include("Lost the leader lease; stepping down");
      const seen = await proxy.requests();
      const afterWaking = seen.filter((r) => r.at >= resumedAt);
      // Counted, with the first few named: a long list would be cut from mocha's diff.
      const woke = kubernetesWrites(afterWaking);
      expect(woke.length, `leader-a's Kubernetes writes after it woke, e.g. ${woke.slice(0, 8).join(", ")}`).to.equal(
        0,
      );
      // Only leader-b reserves now: a reservation on a connection not leader-b's counts against leader-a.
      const stray = reservations(afterWaking, { notPid: b.pid });
      expect(
        stray.length,
        `Buildkite reservations after leader-a woke, not by leader-b: ${stray.slice(0, 8).join(", ")}`,
      ).to.equal(0);
      // The proxy does see and tell apart both leaders' work.
      expect(kubernetesWrites(seen).length, "leader-a's Kubernetes writes while it led").to.be.greaterThan(100);
      expect(
        reservations(
          seen.filter((r) => r.at < paused),
          { pid: a.pid },
        ).length,
        "leader-a's reservations while it led",
      ).to.be.greaterThan(0);
      expect(
        reservations(
          seen.filter((r) => r.at >= paused),
          { pid: b.pid },
        ).length,
        "leader-b's reservations since it took over",
      ).to.be.greaterThan(0);

      for (const uuid of uuids) await s.buildkiteState(uuid, "finished", 180_000);
      const acquired = s.acquisitions();
      expect(
        uuids.filter((u) => acquired.get(u) !== 1),
        "jobs not acquired exactly once",
      ).to.deep.equal([]);
      expect(runner.stats().acquireFailures, "pods that tried to acquire a job already taken").to.equal(0);
      await eventually(
        async () => {
          const jobs = await s.jobsOf(QUEUE);
          expect(jobs.length, "BuildkiteJobs").to.equal(JOBS);
          expect(
            jobs.filter((j) => !TERMINAL.includes(j.status?.phase ?? "")).map((j) => j.metadata.name),
            "unfinished BuildkiteJobs",
          ).to.deep.equal([]);
        },
        { what: `every BuildkiteJob of ${QUEUE} ended`, timeoutMs: 60_000 },
      );
    } finally {
      await watch.stop();
    }
    expect(samples, "samples of pods and slots").to.be.greaterThan(100);
    expect(
      violations,
      `moments with more pods than slots, or a slot held twice; the first: ${violations.slice(0, 3).join(" | ")}`,
    ).to.deep.equal([]);
  });
});
