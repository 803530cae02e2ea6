import { CoordinationV1Api } from "@kubernetes/client-node";
import { expect } from "chai";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { testCluster } from "../support/global-cluster.js";
import { httpGet } from "../support/https-probe.js";
import { OperatorProcess } from "../support/operator-process.js";
import { freePort } from "../support/ports.js";

const FAST = ["--poll-interval-ms=250", "--state-check-interval-ms=500"];

/** One sample of a metric from a Prometheus text page: the sum over series whose labels include `labels`. */
function sample(page: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of page.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_:]+)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (m?.[1] !== name) continue;
    const have = Object.fromEntries(
      (m[3] ?? "")
        .split(",")
        .filter(Boolean)
        .map((kv) => {
          const i = kv.indexOf("=");
          return [kv.slice(0, i), kv.slice(i + 2, -1)];
        }),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[4]);
  }
  return total;
}

describe("Operations: leader election, metrics, health and logs of the operator process", function () {
  this.timeout(180_000);
  let s: BuildkiteScenario;
  const processes: OperatorProcess[] = [];

  before(async () => {
    s = await BuildkiteScenario.start(testCluster().kubeConfig(), "bk-ops");
  });
  after(async () => {
    await Promise.all(processes.map((p) => p.stop()));
    await s.stop();
  });

  const start = async (name: string, extra: string[] = []): Promise<{ proc: OperatorProcess; port: number }> => {
    const port = await freePort();
    const proc = OperatorProcess.start(name, [
      ...FAST,
      `--http-port=${port}`,
      `--lease-namespace=${s.t.namespace}`,
      "--lease-duration-seconds=4",
      `--allowed-endpoints=${s.fake.agentEndpoint}`,
      ...extra,
    ]);
    processes.push(proc);
    await eventually(
      async () => {
        expect((await httpGet(`http://127.0.0.1:${port}/readyz`)).status).to.equal(200);
      },
      { what: `${name} ready` },
    );
    return { proc, port };
  };
  const metrics = async (port: number): Promise<string> => (await httpGet(`http://127.0.0.1:${port}/metrics`)).body;

  it("runs two replicas of which only the leader acts; killing the leader hands over within the lease, and no job is lost or run twice", async () => {
    const a = await start("leader-a");
    await eventually(
      async () => {
        expect(sample(await metrics(a.port), "buildkite_operator_leader")).to.equal(1);
      },
      { what: "the first replica to lead" },
    );
    const b = await start("leader-b");
    await s.queue("ha", "real", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 8 });
    const first = Array.from({ length: 4 }, () => s.fake.seedJob({ queue_key: "ha", command: "sleep 0.5" }));
    for (const uuid of first) await s.buildkiteState(uuid, "finished");
    const standby = await metrics(b.port);
    expect(sample(standby, "buildkite_operator_leader"), "the standby's leader gauge").to.equal(0);
    expect(sample(standby, "buildkite_operator_reconciles_total"), "reconciles on the standby").to.equal(0);
    expect(sample(standby, "buildkite_operator_buildkite_requests_total"), "Buildkite calls from the standby").to.equal(
      0,
    );

    await a.proc.kill();
    const killedAt = Date.now();
    const second = Array.from({ length: 4 }, () => s.fake.seedJob({ queue_key: "ha", command: "sleep 0.5" }));
    await eventually(
      async () => {
        expect(sample(await metrics(b.port), "buildkite_operator_leader")).to.equal(1);
      },
      { what: "the standby to take over", timeoutMs: 20_000 },
    );
    expect(Date.now() - killedAt, "takeover time (ms)").to.be.below(4_000 + 4_000);
    for (const uuid of second) await s.buildkiteState(uuid, "finished", 60_000);
    for (const uuid of [...first, ...second]) expect(s.acquisitions().get(uuid), uuid).to.equal(1);
    const lease = await testCluster()
      .kubeConfig()
      .makeApiClient(CoordinationV1Api)
      .readNamespacedLease({ name: "buildkite-operator", namespace: s.t.namespace });
    expect(lease.spec?.leaseTransitions).to.be.at.least(1);
  });

  it("serves metrics that move with the work: jobs dispatched and completed, wait and duration histograms, slots, API requests, work queues", async () => {
    const running = processes.at(-1);
    await running?.stop();
    const { port } = await start("metrics", ["--leader-elect=false"]);
    await s.queue("metered", "real", { instanceShape: "LINUX_ARM64_4X16", maxVCPU: 8 });
    const uuids = [
      s.fake.seedJob({ queue_key: "metered", command: "exit 0" }),
      s.fake.seedJob({ queue_key: "metered", command: "exit 2" }),
    ];
    for (const uuid of uuids) await s.buildkiteState(uuid, "finished");
    const queue = `${s.t.namespace}/metered`;
    await eventually(
      async () => {
        const page = await metrics(port);
        expect(sample(page, "buildkite_operator_jobs_dispatched_total", { queue, shape: "LINUX_ARM64_4X16" })).to.equal(
          2,
        );
        expect(sample(page, "buildkite_operator_jobs_completed_total", { queue, result: "Succeeded" })).to.equal(1);
        expect(sample(page, "buildkite_operator_jobs_completed_total", { queue, result: "Failed" })).to.equal(1);
        expect(sample(page, "buildkite_operator_job_duration_seconds_count", { queue })).to.equal(2);
        expect(sample(page, "buildkite_operator_queue_wait_seconds_count", { queue })).to.equal(2);
        expect(sample(page, "buildkite_operator_dispatch_latency_seconds_count", { queue })).to.equal(2);
        expect(sample(page, "buildkite_operator_slots_capacity", { queue })).to.equal(2);
        expect(sample(page, "buildkite_operator_slots_used", { queue })).to.equal(0);
        expect(
          sample(page, "buildkite_operator_buildkite_requests_total", { endpoint: "batch-reserve", status: "200" }),
        ).to.be.at.least(1);
        expect(
          sample(page, "buildkite_operator_reconciles_total", { controller: "buildkitejob", result: "success" }),
        ).to.be.at.least(2);
        expect(page).to.match(/^buildkite_operator_workqueue_depth\{controller="buildkitejob"\} \d+$/m);
        expect(page).to.match(/^buildkite_operator_informer_restarts_total\{informer="pods"\} \d+$/m);
        expect(sample(page, "buildkite_operator_leader")).to.equal(1);
        expect(
          sample(page, "buildkite_operator_kubernetes_requests_total", { method: "POST" }),
          "Kubernetes creates",
        ).to.be.at.least(4);
      },
      { what: "the metrics to show both jobs" },
    );
  });

  it("never writes the agent token into its logs, Events or BuildkiteJob status", async () => {
    const dir = testCluster().dir;
    for (const name of ["leader-a", "leader-b", "metrics"]) {
      const log = await readFile(join(dir, `operator-${name}.log`), "utf8");
      expect(log.length, `${name} log`).to.be.greaterThan(0);
      expect(log, `${name} log`).to.not.include(s.fake.agentToken);
      for (const line of log
        .split("\n")
        .filter(Boolean)
        .filter((l) => l.startsWith("{"))) {
        const entry = JSON.parse(line) as Record<string, unknown>;
        expect(entry, "a log line").to.include.keys("level", "message", "time");
      }
    }
    const events = await s.t.core.listNamespacedEvent({ namespace: s.t.namespace });
    expect(JSON.stringify(events.items)).to.not.include(s.fake.agentToken);
    const jobs = [...(await s.jobsOf("ha")), ...(await s.jobsOf("metered"))];
    expect(jobs.length).to.be.greaterThan(0);
    expect(JSON.stringify(jobs)).to.not.include(s.fake.agentToken);
  });
});
