import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobWith } from "../../../test/support/fixtures.js";
import { memoryCache } from "../../../test/support/memory-cache.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { LiveJobs } from "./live-jobs.js";

describe("LiveJobs", () => {
  let jobs: BuildkiteJob[];
  let pods: V1Pod[];
  let index: LiveJobs;
  const names = (list: BuildkiteJob[]): string[] => list.map((j) => j.metadata.name ?? "").sort();
  const podOf = (job: BuildkiteJob): V1Pod => ({ metadata: { name: job.metadata.name ?? "", namespace: "ci" } });
  const changed = (job: BuildkiteJob): void => {
    index.changed("ci", job.metadata.name ?? "");
  };
  beforeEach(() => {
    jobs = [];
    pods = [];
    index = new LiveJobs(
      memoryCache(() => jobs),
      memoryCache(() => pods),
    );
  });

  it("follows a job from waiting for its pod, through running, to ended and its pod gone", () => {
    const job = jobWith("a0000000-0000-4000-8000-000000000001", { phase: "Pending" });
    jobs = [job];
    changed(job);
    expect(names(index.waiting("ci", "linux"))).to.deep.equal([job.metadata.name]);
    expect(names(index.of("ci", "linux"))).to.deep.equal([job.metadata.name]);

    job.status = { phase: "Running", podUID: "pod-uid", slot: 0 };
    pods = [podOf(job)];
    changed(job);
    expect(index.waiting("ci", "linux")).to.deep.equal([]);
    expect(names(index.of("ci", "linux"))).to.deep.equal([job.metadata.name]);

    // Ended, its pod still there: it keeps its slot.
    job.status = { ...job.status, phase: "Succeeded" };
    changed(job);
    expect(names(index.of("ci", "linux"))).to.deep.equal([job.metadata.name]);
    pods = [];
    changed(job);
    expect(index.of("ci", "linux")).to.deep.equal([]);
  });

  it("drops a job that is gone from the cache, and keeps queues and namespaces apart", () => {
    const a = jobWith("a0000000-0000-4000-8000-000000000001", { phase: "Pending" });
    const b = jobWith("a0000000-0000-4000-8000-000000000002", { phase: "Pending" });
    b.spec.queueRef.name = "arm";
    jobs = [a, b];
    changed(a);
    changed(b);
    expect(names(index.of("ci", "linux"))).to.deep.equal([a.metadata.name]);
    expect(names(index.of("ci", "arm"))).to.deep.equal([b.metadata.name]);
    expect(index.of("other", "linux")).to.deep.equal([]);
    jobs = [b];
    changed(a);
    expect(index.of("ci", "linux")).to.deep.equal([]);
    expect(index.waiting("ci", "linux")).to.deep.equal([]);
  });
});
