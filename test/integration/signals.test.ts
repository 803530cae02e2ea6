import { expect } from "chai";
import { readFileSync } from "node:fs";
import { Registry } from "prom-client";
import { dashboardMetrics, dashboardQueries, QUEUE_VARIABLE_METRIC } from "../../hack/chart-dashboard.js";
import { createLogger } from "../../operator/src/observability/logger.js";
import { HttpServer } from "../../operator/src/observability/server.js";
import type { Operator } from "../../operator/src/operator.js";
import { oidcDiscovery } from "../fake-sts/jwks.js";
import { FakeSts } from "../fake-sts/server.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { FastRunner } from "../support/fast-runner.js";
import { testCluster } from "../support/global-cluster.js";
import { httpGet } from "../support/https-probe.js";
import { startTestOperator } from "../support/operator.js";
import { Prometheus, promtoolCheckMetrics, type InstantVector } from "../support/prometheus.js";

const ROLE = "arn:aws:iam::123456789012:role/ci-deploy";
/** Grafana's `$__rate_interval` for a 1 s scrape interval is at least 4 s; a wider window rides out a late scrape. */
const RATE_INTERVAL = "10s";
/** Seeded while the test waits: bounded, so a failing test stops sending jobs on its own. */
const MAX_JOBS = 400;

/** A dashboard query as Grafana sends it with every queue selected ("All" is `.*`). */
const asSent = (expr: string): string => expr.replaceAll("$__rate_interval", RATE_INTERVAL).replaceAll("$queue", ".*");

/** Whether an instant query answered a sample that is a number (not NaN, as a quantile of no rate is). */
const hasData = (data: InstantVector | undefined): boolean =>
  data?.resultType === "vector" && data.result.some(({ value: [, v] }) => Number.isFinite(Number(v)));

/**
 * The operator's signals as the ecosystem reads them: its `/metrics` page passes `promtool check metrics`, and a real
 * Prometheus (Debian's package, a child process on loopback) scrapes it while jobs flow through two queues (one with
 * an AWS role through a fake STS), so every query of the shipped Grafana dashboard is evaluated by Prometheus itself.
 */
describe("Signals: the operator's metrics lint clean and every query of the shipped dashboard works in Prometheus", function () {
  this.timeout(180_000);
  let s: BuildkiteScenario;
  let sts: FakeSts;
  let runner: FastRunner;
  let operator: Operator | undefined;
  let http: HttpServer | undefined;
  let prometheus: Prometheus | undefined;
  let seeding: NodeJS.Timeout | undefined;
  let seeded = 0;

  before(async () => {
    const kc = testCluster().kubeConfig();
    s = await BuildkiteScenario.start(kc, "bk-signals");
    const { server, pki } = testCluster();
    sts = await FakeSts.start({ issuer: server, jwks: oidcDiscovery(server, { ca: readFileSync(pki.caCert) }) });
    sts.addRole({ arn: ROLE, allowedSubjects: [`system:serviceaccount:${s.t.namespace}:bkq-deploy`] });
    runner = await FastRunner.start({
      kubeConfig: kc,
      namespaces: [s.t.namespace],
      fakeEndpoint: s.fake.agentEndpoint,
      durationMs: 300,
      // about one job in eight fails, so the completed jobs have more than one result
      exitCode: (uuid) => (uuid.endsWith("0") || uuid.endsWith("5") ? 1 : 0),
    });
    const registry = new Registry();
    operator = await startTestOperator(kc, "signals", {
      registry,
      buildkite: { pollIntervalMs: 250, stateCheckIntervalMs: 500 },
      allowedEndpoints: [s.fake.agentEndpoint],
      credentials: { recheckIntervalMs: 60_000 },
    });
    const running = operator;
    http = await HttpServer.start({
      port: 0,
      host: "127.0.0.1",
      registry,
      notReady: () => running.notReady(),
      logger: createLogger("error"),
    });
    prometheus = await Prometheus.start({ targets: [`127.0.0.1:${String(http.port)}`] });
    await s.queue("builds", "fast", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 8 });
    await s.queue("deploy", "fast", {
      instanceShape: "LINUX_ARM64_4X16",
      maxVCPU: 8,
      aws: { roleArn: ROLE, region: "us-east-1", stsEndpoint: sts.url },
    });
    seeding = setInterval(() => {
      if (seeded >= MAX_JOBS) return;
      seeded += 3;
      s.fake.seedJob({ queue_key: "builds" });
      s.fake.seedJob({ queue_key: "builds" });
      s.fake.seedJob({ queue_key: "deploy" });
    }, 500);
  });
  after(async () => {
    clearInterval(seeding);
    await prometheus?.stop();
    await http?.close();
    await operator?.stop();
    await runner.stop();
    await sts.stop();
    await s.stop();
  });

  const page = async (): Promise<string> => {
    if (!http) throw new Error("no metrics server");
    return (await httpGet(`http://127.0.0.1:${String(http.port)}/metrics`)).body;
  };

  it("serves a /metrics page that promtool check metrics finds nothing wrong with, once jobs have run", async () => {
    const body = await eventually(
      async () => {
        const text = await page();
        expect(text, "a completed job").to.match(/^buildkite_operator_jobs_completed_total\{/m);
        expect(text, "a job duration").to.match(/^buildkite_operator_job_duration_seconds_bucket\{/m);
        return text;
      },
      { timeoutMs: 60_000, what: "jobs to be completed" },
    );
    const check = promtoolCheckMetrics(body);
    expect(check.output, "promtool check metrics").to.equal("");
    expect(check.status).to.equal(0);
  });

  it("evaluates every dashboard query in Prometheus: each parses, and each not about errors returns data", async () => {
    if (!prometheus) throw new Error("no Prometheus");
    const p = prometheus;
    const queries = dashboardQueries();
    expect(queries.length).to.be.greaterThan(10);
    // A query that does not parse fails at once, whatever the data.
    for (const q of queries) {
      const answer = await p.query(asSent(q.expr));
      expect(answer.status, `"${q.panel}": ${q.expr}: ${answer.error ?? ""}`).to.equal("success");
    }
    await eventually(
      async () => {
        const empty: string[] = [];
        for (const q of queries.filter((x) => !x.errorsOnly)) {
          if (!hasData((await p.query(asSent(q.expr))).data)) empty.push(`"${q.panel}": ${q.expr}`);
        }
        expect(empty.join("\n"), "dashboard queries without data").to.equal("");
      },
      { timeoutMs: 45_000, intervalMs: 1_000, what: "every dashboard query to return data" },
    );
    const names = await p.labelValues("__name__", '{job="buildkite-operator"}');
    expect(dashboardMetrics().filter((m) => !names.includes(m) && !names.includes(`${m}_bucket`))).to.deep.equal([]);
    // The dashboard's queue picker lists every queue.
    expect(await p.labelValues("queue", QUEUE_VARIABLE_METRIC)).to.include.members([
      `${s.t.namespace}/builds`,
      `${s.t.namespace}/deploy`,
    ]);
  });
});
