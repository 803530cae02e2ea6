import { expect } from "chai";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { jobFixture } from "../../../test/support/fixtures.js";
import { decideSlot, jobVCPU, slotLimit, type SlotLimits, type SlotView } from "./slots.js";

function job(n: number, priority = 0, status?: BuildkiteJob["status"]): BuildkiteJob {
  const j = jobFixture(`00000000-0000-4000-8000-00000000000${n}`);
  j.spec.priority = priority;
  j.metadata.creationTimestamp = new Date(Date.UTC(2026, 0, 1, 0, 0, n));
  if (status) j.status = status;
  return j;
}
const view = (j: BuildkiteJob, hasPod = false): SlotView => ({ job: j, hasPod });
/** A 2X4 queue with room for `n` jobs of its shape. */
const slots = (n: number): SlotLimits => ({ instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2 * n });

describe("decideSlot", () => {
  it("gives the lowest free slot", () => {
    const running = [view(job(1, 0, { phase: "Running", slot: 0 }), true), view(job(2, 0, { phase: "Running", slot: 2 }), true)];
    expect(decideSlot(job(3), running, slots(4))).to.deep.equal({ slot: 1 });
  });

  it("makes a job wait when every slot is held, saying where it stands", () => {
    const running = [view(job(1, 0, { phase: "Running", slot: 0 }), true), view(job(2, 0, { phase: "Starting", slot: 1 }), true)];
    expect(decideSlot(job(3), running, slots(2))).to.deep.equal({ waiting: { position: 1, free: 0 } });
  });

  it("hands a free slot to the highest-priority waiting job first, then the oldest", () => {
    const jobs = [view(job(1, 0, { phase: "Running", slot: 0 }), true), view(job(2, 5)), view(job(3, 1)), view(job(4, 5))];
    expect(decideSlot(job(2, 5), jobs, slots(2))).to.deep.equal({ slot: 1 });
    expect(decideSlot(job(4, 5), jobs, slots(2))).to.deep.equal({ waiting: { position: 1, free: 1 } });
    expect(decideSlot(job(3, 1), jobs, slots(2))).to.deep.equal({ waiting: { position: 2, free: 1 } });
  });

  it("keeps a terminal job's slot until its pod is gone", () => {
    const done = job(1, 0, { phase: "Succeeded", slot: 0 });
    expect(decideSlot(job(2), [view(done, true)], slots(1))).to.have.property("waiting");
    expect(decideSlot(job(2), [view(done, false)], slots(1))).to.deep.equal({ slot: 0 });
  });

  it("counts slots reserved by this process that the cache does not show yet", () => {
    const reserved: SlotView = { job: job(1), hasPod: false, reserved: 0 };
    expect(decideSlot(job(2), [reserved], slots(2))).to.deep.equal({ slot: 1 });
  });

  it("keeps the slot a job already holds", () => {
    const mine = job(1, 0, { phase: "Pending", slot: 1 });
    expect(decideSlot(mine, [view(mine), view(job(2, 0, { phase: "Running", slot: 0 }), true)], slots(2))).to.deep.equal({ slot: 1 });
  });

  describe("counted in vCPU, each job at the shape it runs with", () => {
    const small = (n: number, slot: number) => view(job(n, 0, { phase: "Running", slot, shape: "LINUX_AMD64_2X4" }), true);
    const large = (n: number, slot: number) => view(job(n, 0, { phase: "Running", slot, shape: "LINUX_AMD64_8X32" }), true);

    it("after a queue grows from 2X4 to 8X32 (maxVCPU 16) under four running 2X4 jobs, starts exactly one 8X32 job, not two", () => {
      const grown: SlotLimits = { instanceShape: "LINUX_AMD64_8X32", maxVCPU: 16 };
      const running = [small(1, 0), small(2, 1), small(3, 2), small(4, 3)];
      const first = job(5);
      const second = job(6);
      // 8 vCPU held + 8 = 16: one fits, in the lowest free index (the concurrency of 8X32 is 2, but 0–3 are taken).
      expect(decideSlot(first, [...running, view(first), view(second)], grown)).to.deep.equal({ slot: 4 });
      const started = view(job(5, 0, { phase: "Pending", slot: 4, shape: "LINUX_AMD64_8X32" }));
      // 16 held + 8 > 16: the second waits.
      expect(decideSlot(second, [...running, started, view(second)], grown)).to.deep.equal({ waiting: { position: 1, free: 0 } });
    });

    it("after a queue shrinks from 8X32 to 2X4, counts the running 8X32 jobs at 8 vCPU each instead of as one slot each", () => {
      const shrunk: SlotLimits = { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 16 };
      expect(decideSlot(job(3), [large(1, 0), large(2, 1), view(job(3))], shrunk)).to.deep.equal({ waiting: { position: 1, free: 0 } });
      // One 8X32 job left: 8 vCPU free, room for four 2X4 jobs (counting jobs would have allowed seven).
      const waiting = [3, 4, 5, 6, 7].map((n) => job(n));
      const decisions = waiting.map((j) => decideSlot(j, [large(1, 0), ...waiting.map((w) => view(w))], shrunk));
      expect(decisions.filter((d) => "slot" in d)).to.have.length(4);
      expect(decisions[4]).to.deep.equal({ waiting: { position: 1, free: 4 } });
    });

    it("counts a job that holds a slot without a recorded shape (or one it does not know) at the current shape", () => {
      const unrecorded = view(job(1, 0, { phase: "Pending", slot: 0 }));
      const unknown = view(job(2, 0, { phase: "Running", slot: 1, shape: "LINUX_RISCV_1X1" }), true);
      const limits: SlotLimits = { instanceShape: "LINUX_AMD64_4X16", maxVCPU: 12 };
      expect(decideSlot(job(3), [unrecorded, unknown], limits)).to.deep.equal({ slot: 2 });
      expect(decideSlot(job(3), [unrecorded, unknown], { ...limits, maxVCPU: 11 })).to.have.property("waiting");
    });

    it("counts a waiting job at the current shape, whatever shape it recorded while waiting", () => {
      expect(jobVCPU(job(1, 0, { phase: "Pending", reason: "WaitingForSlot", shape: "LINUX_AMD64_2X4" }), "LINUX_AMD64_8X32")).to.equal(8);
      expect(jobVCPU(job(1, 0, { phase: "Running", slot: 0, shape: "LINUX_AMD64_2X4" }), "LINUX_AMD64_8X32")).to.equal(2);
    });

    it("keeps slot indexes of a smaller shape in use until its last job is gone", () => {
      const grown: SlotLimits = { instanceShape: "LINUX_AMD64_8X32", maxVCPU: 16 };
      expect(slotLimit(grown, [small(1, 0), large(2, 4)])).to.equal(8);
      expect(slotLimit(grown, [view(job(1, 0, { phase: "Succeeded", slot: 0, shape: "LINUX_AMD64_2X4" })), large(2, 4)])).to.equal(2);
      expect(slotLimit({ instanceShape: "LINUX_AMD64_2X4", maxVCPU: 16 }, [large(1, 0)])).to.equal(8);
    });
  });
});
