import { expect } from "chai";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { jobFixture } from "../../../test/support/fixtures.js";
import { decideSlot, type SlotView } from "./slots.js";

function job(n: number, priority = 0, status?: BuildkiteJob["status"]): BuildkiteJob {
  const j = jobFixture(`00000000-0000-4000-8000-00000000000${n}`);
  j.spec.priority = priority;
  j.metadata.creationTimestamp = new Date(Date.UTC(2026, 0, 1, 0, 0, n));
  if (status) j.status = status;
  return j;
}
const view = (j: BuildkiteJob, hasPod = false): SlotView => ({ job: j, hasPod });

describe("decideSlot", () => {
  it("gives the lowest free slot", () => {
    const running = [view(job(1, 0, { phase: "Running", slot: 0 }), true), view(job(2, 0, { phase: "Running", slot: 2 }), true)];
    expect(decideSlot(job(3), running, 4)).to.deep.equal({ slot: 1 });
  });

  it("makes a job wait when every slot is held, saying where it stands", () => {
    const running = [view(job(1, 0, { phase: "Running", slot: 0 }), true), view(job(2, 0, { phase: "Starting", slot: 1 }), true)];
    expect(decideSlot(job(3), running, 2)).to.deep.equal({ waiting: { position: 1, free: 0 } });
  });

  it("hands a free slot to the highest-priority waiting job first, then the oldest", () => {
    const jobs = [view(job(1, 0, { phase: "Running", slot: 0 }), true), view(job(2, 5)), view(job(3, 1)), view(job(4, 5))];
    expect(decideSlot(job(2, 5), jobs, 2)).to.deep.equal({ slot: 1 });
    expect(decideSlot(job(4, 5), jobs, 2)).to.deep.equal({ waiting: { position: 1, free: 1 } });
    expect(decideSlot(job(3, 1), jobs, 2)).to.deep.equal({ waiting: { position: 2, free: 1 } });
  });

  it("keeps a terminal job's slot until its pod is gone", () => {
    const done = job(1, 0, { phase: "Succeeded", slot: 0 });
    expect(decideSlot(job(2), [view(done, true)], 1)).to.have.property("waiting");
    expect(decideSlot(job(2), [view(done, false)], 1)).to.deep.equal({ slot: 0 });
  });

  it("counts slots reserved by this process that the cache does not show yet", () => {
    const reserved: SlotView = { job: job(1), hasPod: false, reserved: 0 };
    expect(decideSlot(job(2), [reserved], 2)).to.deep.equal({ slot: 1 });
  });

  it("keeps the slot a job already holds", () => {
    const mine = job(1, 0, { phase: "Pending", slot: 1 });
    expect(decideSlot(mine, [view(mine), view(job(2, 0, { phase: "Running", slot: 0 }), true)], 2)).to.deep.equal({ slot: 1 });
  });
});
