import { expect } from "chai";
import { jobFixture } from "../../../test/support/fixtures.js";
import { Metrics } from "./metrics.js";

/** Every metric of a Metrics with one sampled work queue and informer, as the registry serves them. */
async function registered(): Promise<{ name: string; type: string }[]> {
  const metrics = new Metrics(undefined, {
    workQueues: () => [{ name: "jobs", value: () => 2 }],
    informerRestarts: () => [{ name: "pods", value: () => 3 }],
  });
  return (await metrics.registry.getMetricsAsJSON()).map((m) => ({ name: m.name, type: String(m.type) }));
}

describe("Metrics", () => {
  it("names follow Prometheus conventions: counters and only counters end in _total, all under one prefix", async () => {
    const all = await registered();
    expect(all.length).to.be.greaterThan(20);
    for (const { name, type } of all) {
      expect(name, name).to.match(/^buildkite_operator_[a-z0-9_]+$/);
      expect(name.endsWith("_total"), `${name} is a ${type}`).to.equal(type === "counter");
    }
    const names = all.map((m) => m.name);
    expect(names).to.include.members(["buildkite_operator_slots_capacity", "buildkite_operator_nodejs_active_handles"]);
    expect(names).to.not.include.members([
      "buildkite_operator_slots_total",
      "buildkite_operator_nodejs_active_handles_total",
    ]);
  });

  it("reports each informer's own restart count as a counter, at scrape time", async () => {
    const metrics = new Metrics(undefined, {
      informerRestarts: () => [{ name: "pods", value: () => 3 }],
      processMetrics: false,
    });
    const page = await metrics.registry.metrics();
    expect(page).to.include("# TYPE buildkite_operator_informer_restarts_total counter");
    expect(page).to.match(/^buildkite_operator_informer_restarts_total\{informer="pods"\} 3$/m);
    // a second scrape reports the count again, not twice the count
    expect(await metrics.registry.metrics()).to.match(
      /^buildkite_operator_informer_restarts_total\{informer="pods"\} 3$/m,
    );
  });

  it("shows a queue's slots in use and its capacity, and forgets them with the queue", async () => {
    const metrics = new Metrics(undefined, { processMetrics: false });
    metrics.slots("ci/linux", 1, 4);
    let page = await metrics.registry.metrics();
    expect(page).to.match(/^buildkite_operator_slots_used\{queue="ci\/linux"\} 1$/m);
    expect(page).to.match(/^buildkite_operator_slots_capacity\{queue="ci\/linux"\} 4$/m);
    metrics.queueDeleted("ci/linux");
    page = await metrics.registry.metrics();
    expect(page).to.not.include('queue="ci/linux"');
  });

  it("observes a job's wait once it ran, whether its start was written as Running or only with its end", async () => {
    const metrics = new Metrics(undefined, { processMetrics: false });
    const job = { ...jobFixture(), spec: { ...jobFixture().spec, scheduledAt: "2026-03-01T12:00:00Z" } };
    const created = { phase: "Pending" as const, podUID: "u", shape: "LINUX_AMD64_2X4" as const };
    const startedAt = "2026-03-01T12:00:03Z";
    const running = { ...created, phase: "Running" as const, startedAt };
    const ended = { ...running, phase: "Succeeded" as const, finishedAt: "2026-03-01T12:00:04Z" };
    metrics.jobStatusChanged(job, created, running);
    metrics.jobStatusChanged(job, running, ended);
    metrics.jobStatusChanged(job, created, ended);
    metrics.jobStatusChanged(job, created, { ...created, phase: "Failed", reason: "PodRejected" });
    const page = await metrics.registry.metrics();
    expect(page).to.match(/^buildkite_operator_queue_wait_seconds_count\{[^}]*\} 2$/m);
    expect(page).to.match(/^buildkite_operator_queue_wait_seconds_sum\{[^}]*\} 6$/m);
  });
});
