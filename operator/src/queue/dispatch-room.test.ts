import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobWith as job, queueFixture, scheduled } from "../../../test/support/fixtures.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { ScheduledJob } from "../buildkite/types.js";
import { buildPod } from "../job/pod-builder.js";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { Expectations } from "../kube/expectations.js";
import { memoryJobCaches } from "../../../test/support/memory-cache.js";
import { chooseReservations, dispatchRoom } from "./dispatch.js";

describe("dispatchRoom", () => {
  const queue = queueFixture({ instanceShape: "LINUX_AMD64_2X4", maxVCPU: 8 });
  const QUEUE = "ci/linux";
  let clock: FakeClock;
  let expectations: Expectations;
  let jobs: BuildkiteJob[];
  let pods: V1Pod[];
  let listed: ScheduledJob[];
  const room = () =>
    dispatchRoom(
      queue,
      memoryJobCaches(
        () => jobs,
        () => pods,
      ),
      expectations,
      listed,
    );
  beforeEach(() => {
    clock = new FakeClock();
    expectations = new Expectations(clock);
    jobs = [];
    pods = [];
    listed = [];
  });

  it("counts a BuildkiteJob just created as existing and taking room until the job cache shows it, then from the cache", () => {
    const running = job("d0000000-0000-4000-8000-000000000001", {
      phase: "Running",
      slot: 0,
      shape: "LINUX_AMD64_2X4",
    });
    const done = job("d0000000-0000-4000-8000-000000000002", { phase: "Succeeded", slot: 1, shape: "LINUX_AMD64_2X4" });
    jobs = [running, done];
    const created = job("d0000000-0000-4000-8000-000000000003");
    expectations.created(QUEUE, `ci/${created.metadata.name ?? ""}`);
    // A finished job without a pod no longer counts for capacity: it is known as finished when Buildkite lists it.
    expect(room().finished).to.deep.equal(new Set());
    listed = [{ ...scheduled(1), id: done.spec.uuid }];
    expect(room()).to.deep.equal({
      existing: new Set([running.metadata.name, done.metadata.name, created.metadata.name]),
      finished: new Set([done.metadata.name]),
      unfinishedVCPU: 4,
    });
    const decision = chooseReservations({
      scheduled: [scheduled(1), scheduled(1), scheduled(1)],
      ...room(),
      limits: queue.spec,
      paused: false,
    });
    expect(decision.take).to.have.length(2);
    jobs = [running, done, created];
    expect(room().unfinishedVCPU).to.equal(4);
    expect(expectations.has(QUEUE, `ci/${created.metadata.name ?? ""}`)).to.equal(false);
  });

  it("counts a job whose slot only its pod records at the shape the pod was built with", () => {
    const crashed = job("d0000000-0000-4000-8000-000000000001", { phase: "Pending" });
    crashed.metadata.uid = "uid-crashed";
    jobs = [crashed];
    pods = [buildPod(queueFixture({ instanceShape: "LINUX_AMD64_4X16", maxVCPU: 8 }), crashed, 0)];
    expect(room().unfinishedVCPU).to.equal(4);
  });
});
