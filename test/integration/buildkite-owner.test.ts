import { expect } from "chai";
import { ANNOTATIONS } from "../../operator/src/api/keys.js";
import { jobResourceName } from "../../operator/src/api/names.js";
import type { Operator } from "../../operator/src/operator.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { FastRunner } from "../support/fast-runner.js";
import { testCluster } from "../support/global-cluster.js";
import { startTestOperator } from "../support/operator.js";

describe("The job source owns the Buildkite side: a vanished stack, a queue made anew and a list outage stop nothing for long", function () {
  this.timeout(120_000);
  let s: BuildkiteScenario;
  let operator: Operator | undefined;
  let runner: FastRunner;

  before(async () => {
    const kc = testCluster().kubeConfig();
    s = await BuildkiteScenario.start(kc, "bk-owner");
    runner = await FastRunner.start({
      kubeConfig: s.kc,
      namespaces: [s.t.namespace],
      fakeEndpoint: s.fake.agentEndpoint,
      durationMs: 200,
    });
    operator = await startTestOperator(kc, "buildkite-owner", {
      allowedEndpoints: [s.fake.agentEndpoint],
      buildkite: { pollIntervalMs: 250, stateCheckIntervalMs: 500, reservationExpirySeconds: 3, maxBackoffMs: 1_000 },
    });
  });
  after(async () => {
    await operator?.stop();
    await runner.stop();
    await s.stop();
  });

  const routeCalls = (route: string, from = 0): { path: string; status: number; seq: number; body: unknown }[] =>
    s.fake.requests().filter((r) => r.route === route && r.seq > from);

  it("registers its stack again when Buildkite answers 404 for it, and goes on taking jobs", async () => {
    await s.queue("vanish", "fast");
    await s.buildkiteState(s.fake.seedJob({ queue_key: "vanish", command: "true" }), "finished");
    const mark = s.fake.requests().at(-1)?.seq ?? 0;
    s.fake.injectFault({ route: "stacks.scheduled-jobs", status: 404, count: 2, body: { message: "No stack found" } });
    await eventually(
      () => {
        const notFound = routeCalls("stacks.scheduled-jobs", mark).find((r) => r.status === 404);
        expect(notFound, "a 404 on listing").to.not.equal(undefined);
        expect(routeCalls("stacks.register", notFound?.seq ?? Infinity), "a registration after the 404").to.not.be
          .empty;
        return Promise.resolve();
      },
      { what: "the stack registered again after Buildkite lost it" },
    );
    const reasons = (await s.t.events("vanish")).map((e) => e.reason);
    expect(reasons).to.include("StackNotFound");
    await s.buildkiteState(s.fake.seedJob({ queue_key: "vanish", command: "true" }), "finished");
    await s.condition("vanish", "Registered", "True");
  });

  it("gives a queue deleted and made anew under the same name a stack of its own, which never answers 404", async () => {
    await s.queue("again", "fast");
    await s.buildkiteState(s.fake.seedJob({ queue_key: "again", command: "true" }), "finished");
    const first = s.fake
      .stacks()
      .filter((st) => st.metadata.queue === "again")
      .map((st) => st.key);
    expect(first).to.have.length(1);
    // kubectl replace --force: delete, then create at once (the finalizer holds the old one until its stack is gone).
    await s.t.custom.deleteNamespacedCustomObject({
      group: "buildkite.com",
      version: "v1alpha1",
      plural: "buildkitequeues",
      namespace: s.t.namespace,
      name: "again",
    });
    await eventually(
      async () => {
        expect(await s.t.queue("again")).to.equal(undefined);
      },
      { what: "the old queue gone" },
    );
    const mark = s.fake.requests().at(-1)?.seq ?? 0;
    await s.queue("again", "fast");
    const uuid = s.fake.seedJob({ queue_key: "again", command: "true" });
    await s.buildkiteState(uuid, "finished");
    const stacks = s.fake.stacks().filter((st) => st.metadata.queue === "again");
    const fresh = stacks.map((st) => st.key).filter((k) => !first.includes(k));
    expect(fresh, "a new stack for the new queue").to.have.length(1);
    expect(
      (await s.jobsOf("again")).find((j) => j.spec.uuid === uuid)?.metadata.annotations?.[ANNOTATIONS.stack],
    ).to.equal(fresh[0]);
    const notFound = s.fake
      .requests()
      .filter((r) => r.seq > mark && r.status === 404 && r.path.includes(fresh[0] ?? "?"));
    expect(
      notFound.map((r) => `${r.route ?? ""} ${String(r.status)}`),
      "404s for the new stack",
    ).to.deep.equal([]);
  });

  it("keeps extending reservations and noticing cancellations while listing jobs fails", async () => {
    await s.queue("outage", "hold");
    const held = s.fake.seedJob({ queue_key: "outage", command: "true" });
    const waiting = s.fake.seedJob({ queue_key: "outage", command: "true" });
    await s.jobPhase(held, "Starting");
    await s.jobPhase(waiting, "Starting");
    s.fake.injectFault({ route: "stacks.scheduled-jobs", status: 503, count: 100_000 });
    try {
      const mark = s.fake.requests().at(-1)?.seq ?? 0;
      // Reservations last 3 s: the held job stays ours only if extensions go on.
      await eventually(
        () => {
          const extended = routeCalls("stacks.batch-reserve", mark).filter((r) =>
            ((r.body as { job_uuids?: string[] }).job_uuids ?? []).includes(held),
          );
          expect(extended.length, "extensions during the outage").to.be.at.least(3);
          expect(
            routeCalls("stacks.scheduled-jobs", mark).every((r) => r.status === 503),
            "every listing failed meanwhile",
          ).to.equal(true);
          return Promise.resolve();
        },
        { what: "extensions while listing fails", timeoutMs: 30_000 },
      );
      s.fake.sweep();
      expect(s.fake.job(held).state, "still reserved by this stack").to.equal("reserved");
      s.fake.cancel(waiting);
      const canceled = await s.jobPhase(waiting, "Canceled", 30_000);
      expect(canceled.status?.reason).to.equal("CanceledInBuildkite");
      await s.podGone(waiting);
    } finally {
      s.fake.clearFaults();
    }
    await s.condition("outage", "Dispatching", "True");
    expect(await s.t.pod(jobResourceName(held)), "the held job's pod").to.not.equal(undefined);
  });
});
