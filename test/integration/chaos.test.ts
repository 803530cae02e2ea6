import { expect } from "chai";
import { jobResourceName } from "../../operator/src/api/names.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { FastRunner } from "../support/fast-runner.js";
import { testCluster } from "../support/global-cluster.js";
import { httpGet } from "../support/https-probe.js";
import { OperatorProcess } from "../support/operator-process.js";
import { freePort } from "../support/ports.js";

const TERMINAL = ["Succeeded", "Failed", "Canceled", "TimedOut"];

/**
 * Chaos, in a form short enough for every CI run (`hack/bench` runs the long form): the operator killed without
 * warning, the API server restarted, Buildkite failing — and still every job runs exactly once.
 */
describe("Chaos: kills, API server restarts and Buildkite faults lose no job and run none twice", function () {
  this.timeout(300_000);
  let s: BuildkiteScenario;
  let runner: FastRunner;
  let operator: OperatorProcess | undefined;
  let port = 0;

  before(async () => {
    s = await BuildkiteScenario.start(testCluster().kubeConfig(), "bk-chaos");
    runner = await FastRunner.start({
      kubeConfig: s.kc,
      namespaces: [s.t.namespace],
      fakeEndpoint: s.fake.agentEndpoint,
      durationMs: 200,
    });
  });
  after(async () => {
    await operator?.stop();
    await runner.stop();
    await s.stop();
  });

  /**
   * Reservations of 15 s keep the kill rounds short (a killed operator's reservations lapse soon); the kill rounds run
   * without leader election (a successor would only wait out the lease), the API-server round with the default
   * 15 s lease, which outlives a short outage as it does in production.
   */
  const startOperator = async (name: string, flags: string[] = ["--leader-elect=false"]): Promise<void> => {
    port = await freePort();
    operator = OperatorProcess.start(name, [
      "--poll-interval-ms=250",
      "--state-check-interval-ms=500",
      "--reservation-expiry-seconds=15",
      `--http-port=${port}`,
      `--allowed-endpoints=${s.fake.agentEndpoint}`,
      ...flags,
    ]);
    await eventually(
      async () => {
        expect((await httpGet(`http://127.0.0.1:${port}/readyz`)).status).to.equal(200);
      },
      { what: `${name} ready` },
    );
  };
  const finished = (uuids: readonly string[]): number => uuids.filter((u) => s.fake.job(u).state === "finished").length;
  const exactlyOnce = async (queue: string, uuids: readonly string[]): Promise<void> => {
    for (const uuid of uuids) await s.buildkiteState(uuid, "finished", 120_000);
    const acquired = s.acquisitions();
    const twice = uuids.filter((u) => acquired.get(u) !== 1);
    expect(twice, "jobs not acquired exactly once").to.deep.equal([]);
    await eventually(
      async () => {
        const jobs = await s.jobsOf(queue);
        expect(jobs.length, "BuildkiteJobs").to.equal(uuids.length);
        expect(
          jobs.filter((j) => !TERMINAL.includes(j.status?.phase ?? "")).map((j) => j.metadata.name),
          "unfinished BuildkiteJobs",
        ).to.deep.equal([]);
        expect((await s.t.queue(queue))?.status?.active, "slots held").to.equal(0);
      },
      { what: `every BuildkiteJob of ${queue} ended and its slots free`, timeoutMs: 60_000 },
    );
    expect(runner.stats().acquireFailures, "pods that tried to acquire a job already taken").to.equal(0);
  };

  it("survives SIGKILL of the operator at three random moments of a 150-job run", async () => {
    await startOperator("chaos-kill-0");
    await s.queue("kills", "fast", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 32 });
    const uuids = Array.from({ length: 150 }, (_, i) =>
      s.fake.seedJob({ queue_key: "kills", command: "true", priority: i % 4 }),
    );
    for (let round = 1; round <= 3; round++) {
      const at = Math.floor((round * 150) / 4 + Math.random() * 20) - 10;
      await eventually(
        () => {
          expect(finished(uuids)).to.be.at.least(at);
          return Promise.resolve();
        },
        { what: `${at} jobs finished`, timeoutMs: 120_000 },
      );
      await operator?.kill();
      await startOperator(`chaos-kill-${round}`);
    }
    await exactlyOnce("kills", uuids);
  });

  it("recovers from a kube-apiserver restart mid-run: informers restart (and say so in metrics), readiness returns, no job is missed", async () => {
    await operator?.stop();
    await startOperator("chaos-apiserver", [`--lease-namespace=${s.t.namespace}`, "--lease-duration-seconds=15"]);
    await s.queue("apiserver", "fast", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 32 });
    const uuids = Array.from({ length: 80 }, () => s.fake.seedJob({ queue_key: "apiserver", command: "true" }));
    await eventually(
      () => {
        expect(finished(uuids)).to.be.at.least(20);
        return Promise.resolve();
      },
      { what: "20 jobs finished", timeoutMs: 120_000 },
    );
    const restartedAt = Date.now();
    await testCluster().restartApiServer(2_000);
    await eventually(
      async () => {
        const page = (await httpGet(`http://127.0.0.1:${port}/metrics`)).body;
        const restarts = page
          .split("\n")
          .filter((l) => l.startsWith("buildkite_operator_informer_restarts_total{"))
          .reduce((n, l) => n + Number(l.split(" ").at(-1)), 0);
        expect(restarts, "informer restarts").to.be.greaterThan(0);
        expect((await httpGet(`http://127.0.0.1:${port}/readyz`)).status).to.equal(200);
      },
      { what: "informers restarted and ready again", timeoutMs: 30_000 },
    );
    expect(Date.now() - restartedAt, "recovery time (ms)").to.be.below(30_000);
    await exactlyOnce("apiserver", uuids);
  });

  it("loses nothing through Buildkite's 429 bursts, 5xx errors and 2 s latency", async () => {
    await s.queue("faults", "fast", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 32 });
    s.fake.injectFault({ route: "stacks.scheduled-jobs", status: 429, count: 8, retry_after: 1 });
    s.fake.injectFault({ route: "stacks.batch-reserve", status: 503, count: 3 });
    s.fake.injectFault({ route: "stacks.get-states", status: 500, count: 3 });
    s.fake.injectFault({ route: "stacks.job-acquisition-tokens", status: 502, count: 2 });
    s.fake.injectFault({ route: "stacks.scheduled-jobs", delay_ms: 2_000, count: 5 });
    const uuids = Array.from({ length: 60 }, () => s.fake.seedJob({ queue_key: "faults", command: "true" }));
    await exactlyOnce("faults", uuids);
    const pods = await Promise.all(uuids.slice(0, 5).map((u) => s.t.pod(jobResourceName(u))));
    expect(
      pods.filter((p) => p !== undefined),
      "pods left behind",
    ).to.deep.equal([]);
  });
});
