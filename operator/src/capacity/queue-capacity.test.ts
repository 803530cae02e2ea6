import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { buildPod } from "../job/pod-builder.js";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import { memoryJobCaches } from "../../../test/support/memory-cache.js";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { EXPECTATION_TTL_MS, Expectations } from "../kube/expectations.js";
import {
  decideSlot,
  heldVCPU,
  jobCounts,
  queueCapacity,
  roomForNewJobs,
  seatOf,
  seatVCPU,
  slotLimit,
  type QueueCapacity,
  type Seat,
  type SlotLimits,
} from "./queue-capacity.js";

function job(n: number, priority = 0, status?: BuildkiteJob["status"]): BuildkiteJob {
  const j = jobFixture(`00000000-0000-4000-8000-00000000000${n}`);
  j.spec.priority = priority;
  j.metadata.uid = `uid-${n}`;
  j.metadata.creationTimestamp = new Date(Date.UTC(2026, 0, 1, 0, 0, n));
  if (status) j.status = status;
  return j;
}
const view = (j: BuildkiteJob, hasPod = false): Seat => ({ ...seatOf(j, undefined), hasPod });
/** A 2X4 queue with room for `n` jobs of its shape. */
const slots = (n: number): SlotLimits => ({ instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2 * n });
const cap = (limits: SlotLimits, seats: Seat[], expectedJobs: string[] = []): QueueCapacity => ({
  limits,
  seats,
  expectedJobs,
});

describe("decideSlot", () => {
  it("gives the lowest free slot", () => {
    const running = [
      view(job(1, 0, { phase: "Running", slot: 0 }), true),
      view(job(2, 0, { phase: "Running", slot: 2 }), true),
    ];
    expect(decideSlot(cap(slots(4), running), job(3))).to.deep.equal({ slot: 1 });
  });

  it("makes a job wait when every slot is held, saying where it stands", () => {
    const running = [
      view(job(1, 0, { phase: "Running", slot: 0 }), true),
      view(job(2, 0, { phase: "Starting", slot: 1 }), true),
    ];
    expect(decideSlot(cap(slots(2), running), job(3))).to.deep.equal({ waiting: { position: 1, free: 0 } });
  });

  it("hands a free slot to the highest-priority waiting job first, then the oldest", () => {
    const c = cap(slots(2), [
      view(job(1, 0, { phase: "Running", slot: 0 }), true),
      view(job(2, 5)),
      view(job(3, 1)),
      view(job(4, 5)),
    ]);
    expect(decideSlot(c, job(2, 5))).to.deep.equal({ slot: 1 });
    expect(decideSlot(c, job(4, 5))).to.deep.equal({ waiting: { position: 1, free: 1 } });
    expect(decideSlot(c, job(3, 1))).to.deep.equal({ waiting: { position: 2, free: 1 } });
  });

  it("keeps a terminal job's slot until its pod is gone", () => {
    const done = job(1, 0, { phase: "Succeeded", slot: 0 });
    expect(decideSlot(cap(slots(1), [view(done, true)]), job(2))).to.have.property("waiting");
    expect(decideSlot(cap(slots(1), [view(done, false)]), job(2))).to.deep.equal({ slot: 0 });
  });

  it("counts slots handed out by this process that the caches do not show yet, and keeps a job's own", () => {
    const assigned = seatOf(job(1), undefined, { kind: "assigned", slot: 0 });
    expect(decideSlot(cap(slots(2), [assigned]), job(2))).to.deep.equal({ slot: 1 });
    expect(decideSlot(cap(slots(2), [assigned, view(job(2))]), job(1))).to.deep.equal({ slot: 0 });
  });

  it("keeps the slot a job already holds", () => {
    const mine = job(1, 0, { phase: "Pending", slot: 1 });
    expect(
      decideSlot(cap(slots(2), [view(mine), view(job(2, 0, { phase: "Running", slot: 0 }), true)]), mine),
    ).to.deep.equal({ slot: 1 });
  });

  describe("counted in vCPU, each job at the shape it runs with", () => {
    const small = (n: number, slot: number) =>
      view(job(n, 0, { phase: "Running", slot, shape: "LINUX_AMD64_2X4" }), true);
    const large = (n: number, slot: number) =>
      view(job(n, 0, { phase: "Running", slot, shape: "LINUX_AMD64_8X32" }), true);

    it("after a queue grows from 2X4 to 8X32 (maxVCPU 16) under four running 2X4 jobs, starts exactly one 8X32 job, not two", () => {
      const grown: SlotLimits = { instanceShape: "LINUX_AMD64_8X32", maxVCPU: 16 };
      const running = [small(1, 0), small(2, 1), small(3, 2), small(4, 3)];
      const first = job(5);
      const second = job(6);
      // 8 vCPU held + 8 = 16: one fits, in the lowest free index (the concurrency of 8X32 is 2, but 0–3 are taken).
      expect(decideSlot(cap(grown, [...running, view(first), view(second)]), first)).to.deep.equal({ slot: 4 });
      const started = view(job(5, 0, { phase: "Pending", slot: 4, shape: "LINUX_AMD64_8X32" }));
      // 16 held + 8 > 16: the second waits.
      expect(decideSlot(cap(grown, [...running, started, view(second)]), second)).to.deep.equal({
        waiting: { position: 1, free: 0 },
      });
    });

    it("after a queue shrinks from 8X32 to 2X4, counts the running 8X32 jobs at 8 vCPU each instead of as one slot each", () => {
      const shrunk: SlotLimits = { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 16 };
      expect(decideSlot(cap(shrunk, [large(1, 0), large(2, 1), view(job(3))]), job(3))).to.deep.equal({
        waiting: { position: 1, free: 0 },
      });
      // One 8X32 job left: 8 vCPU free, room for four 2X4 jobs (counting jobs would have allowed seven).
      const waiting = [3, 4, 5, 6, 7].map((n) => job(n));
      const decisions = waiting.map((j) => decideSlot(cap(shrunk, [large(1, 0), ...waiting.map((w) => view(w))]), j));
      expect(decisions.filter((d) => "slot" in d)).to.have.length(4);
      expect(decisions[4]).to.deep.equal({ waiting: { position: 1, free: 4 } });
    });

    it("counts a job that holds a slot without a recorded shape (or one it does not know) at the current shape", () => {
      const unrecorded = view(job(1, 0, { phase: "Pending", slot: 0 }));
      const unknown = view(job(2, 0, { phase: "Running", slot: 1, shape: "LINUX_RISCV_1X1" }), true);
      const limits: SlotLimits = { instanceShape: "LINUX_AMD64_4X16", maxVCPU: 12 };
      expect(decideSlot(cap(limits, [unrecorded, unknown]), job(3))).to.deep.equal({ slot: 2 });
      expect(decideSlot(cap({ ...limits, maxVCPU: 11 }, [unrecorded, unknown]), job(3))).to.have.property("waiting");
    });

    it("counts a waiting job at the current shape, whatever shape it recorded while waiting", () => {
      expect(
        seatVCPU(
          view(job(1, 0, { phase: "Pending", reason: "WaitingForSlot", shape: "LINUX_AMD64_2X4" })),
          "LINUX_AMD64_8X32",
        ),
      ).to.equal(8);
      expect(
        seatVCPU(view(job(1, 0, { phase: "Running", slot: 0, shape: "LINUX_AMD64_2X4" })), "LINUX_AMD64_8X32"),
      ).to.equal(2);
    });

    it("keeps slot indexes of a smaller shape in use until its last job is gone", () => {
      const grown: SlotLimits = { instanceShape: "LINUX_AMD64_8X32", maxVCPU: 16 };
      expect(slotLimit(cap(grown, [small(1, 0), large(2, 4)]))).to.equal(8);
      expect(
        slotLimit(
          cap(grown, [view(job(1, 0, { phase: "Succeeded", slot: 0, shape: "LINUX_AMD64_2X4" })), large(2, 4)]),
        ),
      ).to.equal(2);
      expect(slotLimit(cap({ instanceShape: "LINUX_AMD64_2X4", maxVCPU: 16 }, [large(1, 0)]))).to.equal(8);
    });
  });
});

describe("seatOf", () => {
  const queue = queueFixture({ instanceShape: "LINUX_AMD64_8X32", maxVCPU: 32 });
  const podOf = (j: BuildkiteJob, slot: number): V1Pod => buildPod(queue, j, slot);

  it("takes the slot its status records, with the shape recorded with it", () => {
    const j = job(1, 0, { phase: "Running", slot: 2, shape: "LINUX_AMD64_2X4" });
    expect(seatOf(j, podOf(j, 2))).to.include({ slot: 2, shape: "LINUX_AMD64_2X4", hasPod: true });
  });

  it("takes the slot and shape from the job's own pod when the status has none (the write after the pod's create was lost)", () => {
    const j = job(1, 0, { phase: "Pending", reason: "WaitingForSlot", shape: "LINUX_AMD64_2X4" });
    const seat = seatOf(j, podOf(j, 3));
    expect(seat).to.include({ slot: 3, shape: "LINUX_AMD64_8X32", hasPod: true });
    expect(seatVCPU(seat, "LINUX_AMD64_2X4")).to.equal(8);
  });

  it("never takes the slot from a pod of the same name that another (earlier) BuildkiteJob owns", () => {
    const earlier = job(1);
    const pod = podOf(earlier, 3);
    const again = job(1);
    again.metadata.uid = "uid-again";
    expect(seatOf(again, pod)).to.deep.equal({ job: again, hasPod: true });
  });

  it("takes a slot this process handed out last, and never for an object only created", () => {
    expect(seatOf(job(1), undefined, { kind: "assigned", slot: 1 })).to.include({ slot: 1, hasPod: false });
    expect(seatOf(job(1), undefined, { kind: "created" })).to.not.have.property("slot");
  });
});

describe("queueCapacity", () => {
  const queue = queueFixture({ instanceShape: "LINUX_AMD64_2X4", maxVCPU: 6 });
  const QUEUE = "ci/linux";
  let clock: FakeClock;
  let expectations: Expectations;
  let jobs: BuildkiteJob[];
  let pods: V1Pod[];
  const read = () =>
    queueCapacity(
      queue,
      memoryJobCaches(
        () => jobs,
        () => pods,
      ),
      expectations,
    );
  beforeEach(() => {
    clock = new FakeClock();
    expectations = new Expectations(clock);
    jobs = [];
    pods = [];
  });

  it("after a crash between a pod's create and its status write, counts the slot the pod records: no second job gets it", () => {
    const crashed = job(1, 0, { phase: "Pending", reason: "WaitingForSlot" });
    jobs = [crashed, job(2), job(3)];
    pods = [buildPod(queue, crashed, 0)];
    const capacity = read();
    expect(decideSlot(capacity, job(2))).to.deep.equal({ slot: 1 });
    expect(jobCounts(capacity)).to.deep.equal({ active: 1, waiting: 2 });
    expect(heldVCPU(capacity)).to.equal(6);
  });

  it("holds a slot handed out until the caches show it on the job or its pod, then drops the expectation", () => {
    jobs = [job(1), job(2)];
    expectations.assigned(QUEUE, "ci/bkj-00000000-0000-4000-8000-000000000001", 0);
    expect(decideSlot(read(), job(2))).to.deep.equal({ slot: 1 });
    pods = [buildPod(queue, job(1), 0)];
    expect(decideSlot(read(), job(2))).to.deep.equal({ slot: 1 });
    expect(expectations.has(QUEUE, "ci/bkj-00000000-0000-4000-8000-000000000001")).to.equal(false);
  });

  it("keeps a handed-out slot while its job is missing from the cache, until forgotten or the TTL passes", () => {
    jobs = [job(2)];
    expectations.assigned(QUEUE, "ci/bkj-00000000-0000-4000-8000-000000000001", 0);
    read();
    expect(expectations.has(QUEUE, "ci/bkj-00000000-0000-4000-8000-000000000001")).to.equal(true);
    clock.advance(EXPECTATION_TTL_MS + 1);
    read();
    expect(expectations.has(QUEUE, "ci/bkj-00000000-0000-4000-8000-000000000001")).to.equal(false);
  });

  it("counts BuildkiteJobs created and not yet in the cache against the room for new jobs, until the cache shows them", () => {
    jobs = [job(1, 0, { phase: "Running", slot: 0, shape: "LINUX_AMD64_2X4" })];
    expectations.created(QUEUE, "ci/bkj-new");
    const before = read();
    expect(before.expectedJobs).to.deep.equal(["bkj-new"]);
    expect(roomForNewJobs(before)).to.equal(1);
    jobs = [...jobs, jobFixture("new")];
    const after = read();
    expect(after.expectedJobs).to.deep.equal([]);
    expect(roomForNewJobs(after)).to.equal(1);
    expect(expectations.has(QUEUE, "ci/bkj-new")).to.equal(false);
  });

  it("forgets a created job the cache never shows once the TTL passes, so no room is lost for good", () => {
    expectations.created(QUEUE, "ci/bkj-lost");
    expect(roomForNewJobs(read())).to.equal(2);
    clock.advance(EXPECTATION_TTL_MS + 1);
    expect(roomForNewJobs(read())).to.equal(3);
  });

  it("drops a handed-out slot once the job ended without one (nothing left to record it)", () => {
    jobs = [job(1, 0, { phase: "Canceled" })];
    expectations.assigned(QUEUE, "ci/bkj-00000000-0000-4000-8000-000000000001", 0);
    expect(decideSlot(read(), job(2))).to.deep.equal({ slot: 0 });
    expect(expectations.has(QUEUE, "ci/bkj-00000000-0000-4000-8000-000000000001")).to.equal(false);
  });

  it("reads only the queue's own jobs", () => {
    jobs = [job(1, 0, { phase: "Running", slot: 0 }), jobFixture("other", "arm")];
    expect(read().seats.map((s) => s.job.metadata.name)).to.deep.equal(["bkj-00000000-0000-4000-8000-000000000001"]);
  });
});
