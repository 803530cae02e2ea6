import { expect } from "chai";
import { jobWith as job, queueFixture, scheduled } from "../../../test/support/fixtures.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { ANNOTATIONS } from "../api/keys.js";
import { jobResourceName } from "../api/names.js";
import type { JobState } from "../buildkite/types.js";
import type { SlotLimits } from "../capacity/queue-capacity.js";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { Expectations } from "../kube/expectations.js";
import { memoryJobCaches } from "../../../test/support/memory-cache.js";
import {
  afterReserve,
  chooseReservations,
  dispatchRoom,
  finishDetail,
  jobResourceFor,
  recentlyEnded,
  reportsDue,
  reservationsToExtend,
  stranded,
  takenBack,
  timelineNotes,
} from "./dispatch.js";
import { reportAnnotation, RESERVATION_PENDING } from "../job/plan.js";

/** The vCPU a queue's unfinished jobs hold, as the job source reads it (plus `created` jobs not yet in the cache). */
const heldBy = (jobs: BuildkiteJob[], limits: SlotLimits, created = 0): number => {
  const expectations = new Expectations(new FakeClock());
  for (let i = 0; i < created; i++) expectations.created("ci/linux", `ci/created-${String(i)}`);
  return dispatchRoom(
    queueFixture(limits),
    memoryJobCaches(
      () => jobs,
      () => [],
    ),
    expectations,
    [],
  ).unfinishedVCPU;
};

/** A 2X4 queue with room for `n` jobs of its shape. */
const slots = (n: number): SlotLimits => ({ instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2 * n });

describe("chooseReservations", () => {
  it("takes only as many jobs as there are free slots, highest priority first, then the earliest scheduled", () => {
    const low = scheduled(1);
    const high = scheduled(9);
    const midEarly = scheduled(5, "2026-03-01T11:00:00Z");
    const midLate = scheduled(5, "2026-03-01T11:30:00Z");
    const d = chooseReservations({
      scheduled: [low, high, midLate, midEarly],
      existing: new Set(),
      unfinishedVCPU: 2,
      limits: slots(4),
      paused: false,
    });
    expect(d.take.map((j) => j.id)).to.deep.equal([high.id, midEarly.id, midLate.id]);
    expect(d.reclaim).to.deep.equal([]);
  });

  it("takes nothing when every slot is held, and never a negative number", () => {
    const d = chooseReservations({
      scheduled: [scheduled(1)],
      existing: new Set(),
      unfinishedVCPU: 12,
      limits: slots(4),
      paused: false,
    });
    expect(d.take).to.deep.equal([]);
  });

  it("takes nothing new while paused, but reclaims jobs that already have a BuildkiteJob", () => {
    const mine = scheduled(1);
    const d = chooseReservations({
      scheduled: [mine, scheduled(2)],
      existing: new Set([jobResourceName(mine.id)]),
      unfinishedVCPU: 0,
      limits: slots(4),
      paused: true,
    });
    expect(d).to.deep.equal({ take: [], reclaim: [mine.id] });
  });

  it("after a queue grows from 2X4 to 8X32 (maxVCPU 16) under four running 2X4 jobs, reserves exactly one 8X32 job, not two", () => {
    const running = [1, 2, 3, 4].map((n) =>
      job(`b0000000-0000-4000-8000-00000000000${n}`, { phase: "Running", slot: n - 1, shape: "LINUX_AMD64_2X4" }),
    );
    const grown: SlotLimits = { instanceShape: "LINUX_AMD64_8X32", maxVCPU: 16 };
    const held = heldBy(running, grown);
    expect(held).to.equal(8);
    const d = chooseReservations({
      scheduled: [scheduled(1), scheduled(1), scheduled(1)],
      existing: new Set(),
      unfinishedVCPU: held,
      limits: grown,
      paused: false,
    });
    expect(d.take).to.have.length(1);
  });

  it("after a queue shrinks from 8X32 to 2X4, counts the unfinished 8X32 jobs at 8 vCPU each", () => {
    const running = [
      job("b0000000-0000-4000-8000-000000000001", { phase: "Running", slot: 0, shape: "LINUX_AMD64_8X32" }),
    ];
    const shrunk: SlotLimits = { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 16 };
    const many = Array.from({ length: 8 }, () => scheduled(1));
    expect(
      chooseReservations({
        scheduled: many,
        existing: new Set(),
        unfinishedVCPU: heldBy(running, shrunk),
        limits: shrunk,
        paused: false,
      }).take,
    ).to.have.length(4);
  });

  it("counts waiting jobs and jobs just created at the current shape, and finished jobs not at all", () => {
    const waiting = job("b0000000-0000-4000-8000-000000000001", {
      phase: "Pending",
      reason: "WaitingForSlot",
      shape: "LINUX_AMD64_2X4",
    });
    const done = job("b0000000-0000-4000-8000-000000000002", {
      phase: "Succeeded",
      slot: 0,
      shape: "LINUX_AMD64_8X32",
    });
    expect(heldBy([waiting, done], { instanceShape: "LINUX_AMD64_4X16", maxVCPU: 64 }, 2)).to.equal(12);
  });

  it("never takes a job again that already has a BuildkiteJob here (its reservation lapsed)", () => {
    const mine = scheduled(9);
    const other = scheduled(1);
    const d = chooseReservations({
      scheduled: [mine, other],
      existing: new Set([jobResourceName(mine.id)]),
      unfinishedVCPU: 2,
      limits: slots(2),
      paused: false,
    });
    expect(d.take.map((j) => j.id)).to.deep.equal([other.id]);
    expect(d.reclaim).to.deep.equal([mine.id]);
  });
});

describe("reservationsToExtend", () => {
  const now = Date.parse("2026-03-01T12:00:00Z");
  it("extends jobs not started whose last reservation is older than a third of the expiry, or unknown", () => {
    const jobs = [
      job("a0000000-0000-4000-8000-000000000001", { phase: "Pending" }),
      job("a0000000-0000-4000-8000-000000000002", { phase: "Starting" }),
      job("a0000000-0000-4000-8000-000000000003", { phase: "Pending" }),
    ];
    const last = new Map([
      ["a0000000-0000-4000-8000-000000000001", now - 301_000],
      ["a0000000-0000-4000-8000-000000000003", now - 100_000],
    ]);
    expect(reservationsToExtend(jobs, last, now, 900)).to.deep.equal([
      "a0000000-0000-4000-8000-000000000001",
      "a0000000-0000-4000-8000-000000000002",
    ]);
  });

  it("keeps extending a started pod's job while Buildkite still reports it reserved (its agent is still registering)", () => {
    const jobs = [
      job("a0000000-0000-4000-8000-000000000001", { phase: "Running" }),
      job("a0000000-0000-4000-8000-000000000002", { phase: "Running" }),
    ];
    const states = new Map<string, JobState>([
      ["a0000000-0000-4000-8000-000000000001", "reserved"],
      ["a0000000-0000-4000-8000-000000000002", "running"],
    ]);
    expect(reservationsToExtend(jobs, new Map(), now, 900, states)).to.deep.equal([
      "a0000000-0000-4000-8000-000000000001",
    ]);
  });

  it("leaves alone jobs whose agent may have started, and finished jobs", () => {
    const jobs = [
      job("a0000000-0000-4000-8000-000000000001", { phase: "Running" }),
      job("a0000000-0000-4000-8000-000000000002", { phase: "Starting", startedAt: "2026-03-01T11:59:00Z" }),
      job("a0000000-0000-4000-8000-000000000003", { phase: "Failed" }),
    ];
    expect(reservationsToExtend(jobs, new Map(), now, 900)).to.deep.equal([]);
  });
});

describe("takenBack", () => {
  const uuid = "a0000000-0000-4000-8000-000000000001";
  const cases: [JobState, boolean][] = [
    ["canceled", true],
    ["canceling", true],
    ["expired", true],
    ["timed_out", true],
    ["skipped", true],
    ["broken", true],
    ["scheduled", false],
    ["reserved", false],
    ["accepted", false],
    ["running", false],
    ["finished", false],
  ];
  for (const [state, marked] of cases) {
    it(`${marked ? "marks" : "does not mark"} a job Buildkite reports ${state}`, () => {
      expect(takenBack([job(uuid)], new Map([[uuid, state]]))).to.deep.equal(
        marked ? [{ name: jobResourceName(uuid), state }] : [],
      );
    });
  }
  it("marks a job once per state, and skips jobs Buildkite did not mention", () => {
    const marked = job(uuid, {}, { [ANNOTATIONS.buildkiteState]: "canceled" });
    expect(
      takenBack([marked, job("a0000000-0000-4000-8000-000000000002")], new Map([[uuid, "canceled"]])),
    ).to.deep.equal([]);
  });
});

describe("jobResourceFor", () => {
  it("names the BuildkiteJob after the uuid, owns it by the queue and copies what kubectl should show", () => {
    const queue = queueFixture();
    const s = scheduled(3);
    const bkj = jobResourceFor(queue, { ...s, step: { key: "build" } }, "bk-op-stack");
    expect(bkj.metadata.name).to.equal(jobResourceName(s.id));
    expect(bkj.metadata.annotations).to.deep.equal({ [ANNOTATIONS.stack]: "bk-op-stack" });
    expect(bkj.metadata.ownerReferences?.[0]).to.include({
      kind: "BuildkiteQueue",
      name: queue.metadata.name,
      uid: queue.metadata.uid,
      controller: true,
    });
    expect(bkj.spec).to.deep.equal({
      queueRef: { name: queue.metadata.name },
      uuid: s.id,
      priority: 3,
      scheduledAt: s.scheduled_at,
      agentQueryRules: ["queue=q"],
      pipelineSlug: "p",
      buildNumber: 7,
      branch: "main",
      stepKey: "build",
    });
  });

  it("says how the pod gets its token: the Secret of its own job token, or held back until the reservation is confirmed", () => {
    const s = scheduled(1);
    expect(jobResourceFor(queueFixture(), s, "k", { tokenSecret: "bkj-x-token" }).metadata.annotations).to.deep.equal({
      [ANNOTATIONS.stack]: "k",
      [ANNOTATIONS.agentTokenSecret]: "bkj-x-token",
    });
    expect(jobResourceFor(queueFixture(), s, "k", { pending: true }).metadata.annotations).to.deep.equal({
      [ANNOTATIONS.stack]: "k",
      [ANNOTATIONS.reservation]: RESERVATION_PENDING,
    });
  });

  it("records the build's branch (it scopes Branch caches), and none when Buildkite has none", () => {
    const s = scheduled(1);
    expect(
      jobResourceFor(queueFixture(), { ...s, build: { ...s.build, branch: "feature/x" } }, "k").spec.branch,
    ).to.equal("feature/x");
    expect(
      jobResourceFor(queueFixture(), { ...s, build: { ...s.build, branch: null } }, "k").spec,
    ).to.not.have.property("branch");
  });
});

describe("stranded", () => {
  const uuid = "a0000000-0000-4000-8000-000000000001";
  it("marks a job whose pod ended while Buildkite still has it waiting (its agent never acquired it)", () => {
    for (const phase of ["Succeeded", "Failed", "TimedOut"] as const) {
      expect(stranded([job(uuid, { phase })], new Map([[uuid, "reserved"]])), phase).to.deep.equal([
        { name: jobResourceName(uuid), state: "reserved" },
      ]);
    }
    expect(stranded([job(uuid, { phase: "Failed" })], new Map([[uuid, "scheduled"]]))).to.have.length(1);
  });

  it("leaves alone jobs the agent acquired, canceled jobs, running jobs and jobs already marked or reported", () => {
    expect(stranded([job(uuid, { phase: "Succeeded" })], new Map([[uuid, "finished"]]))).to.deep.equal([]);
    expect(stranded([job(uuid, { phase: "Canceled" })], new Map([[uuid, "reserved"]]))).to.deep.equal([]);
    expect(stranded([job(uuid, { phase: "Running" })], new Map([[uuid, "reserved"]]))).to.deep.equal([]);
    expect(
      stranded(
        [job(uuid, { phase: "Failed" }, { [ANNOTATIONS.buildkiteState]: "reserved" })],
        new Map([[uuid, "reserved"]]),
      ),
    ).to.deep.equal([]);
    const reported = job(uuid, {
      phase: "Failed",
      conditions: [
        { type: "ReportedToBuildkite", status: "True", reason: "Finished", message: "", lastTransitionTime: "" },
      ],
    });
    expect(stranded([reported], new Map([[uuid, "reserved"]]))).to.deep.equal([]);
  });

  it("checks only jobs that ended in the last 15 minutes", () => {
    const now = Date.parse("2026-03-01T12:00:00Z");
    const fresh = job(uuid, { phase: "Failed", finishedAt: "2026-03-01T11:50:00Z" });
    const old = job("a0000000-0000-4000-8000-000000000002", { phase: "Failed", finishedAt: "2026-03-01T11:40:00Z" });
    expect(
      recentlyEnded([fresh, old, job("a0000000-0000-4000-8000-000000000003", { phase: "Running" })], now),
    ).to.deep.equal([fresh]);
  });
});

describe("reportsDue", () => {
  it("lists this stack's jobs that could not run and are not reported yet, once", () => {
    const never = job(
      "a",
      { phase: "Failed", reason: "ImagePullFailed", message: "Image x could not be pulled." },
      { [ANNOTATIONS.stack]: "k" },
    );
    const told = job(
      "b",
      { phase: "Failed", reason: "ImagePullFailed" },
      { [ANNOTATIONS.stack]: "k", [ANNOTATIONS.reported]: reportAnnotation("Finished", "told") },
    );
    const ran = job("c", { phase: "Failed", reason: "NonZeroExit" }, { [ANNOTATIONS.stack]: "k" });
    const otherStack = job("d", { phase: "Failed", reason: "ImagePullFailed" }, { [ANNOTATIONS.stack]: "other" });
    const stillWaiting = job(
      "f",
      { phase: "Pending", reason: "Unschedulable", message: "No node can run the pod yet" },
      { [ANNOTATIONS.stack]: "k" },
    );
    expect(reportsDue([never, told, ran, otherStack, stillWaiting], "k").map((j) => j.spec.uuid)).to.deep.equal(["a"]);
    expect(finishDetail(never)).to.equal(
      `Image x could not be pulled. (BuildkiteJob ci/${jobResourceName("a")}, reason ImagePullFailed)`,
    );
  });

  it("explains a job whose agent never acquired it", () => {
    const stranded = job(
      "e",
      { phase: "Succeeded", reason: "Succeeded", message: "exit 0" },
      { [ANNOTATIONS.stack]: "k", [ANNOTATIONS.buildkiteState]: "reserved" },
    );
    expect(reportsDue([stranded], "k")).to.have.length(1);
    expect(finishDetail(stranded)).to.include("before its agent acquired the job, so it was not run");
  });
});

describe("timelineNotes", () => {
  it("notes the wait for a slot, the pod, the node, and a broken AWS role, each as its own fact", () => {
    const queue = queueFixture({
      aws: {
        roleArn: "arn:aws:iam::123456789012:role/ci",
        region: "eu-west-1",
        audience: "sts.amazonaws.com",
        tokenExpirationSeconds: 3600,
      },
    });
    expect(
      timelineNotes(job("a", { reason: "WaitingForSlot", message: "All 2 slots are in use." }), queue),
    ).to.deep.equal([{ fact: "waiting", text: "All 2 slots are in use." }]);
    const placed = job("a", { podUID: "u", podName: "bkj-a", shape: "LINUX_AMD64_2X4", nodeName: "node-1" });
    expect(timelineNotes(placed, queue).map((n) => n.fact)).to.deep.equal(["pod", "node"]);
    queue.status = {
      conditions: [
        {
          type: "CredentialsReady",
          status: "False",
          reason: "AccessDenied",
          message: "denied",
          lastTransitionTime: "2026-03-01T12:00:00Z",
        },
      ],
    };
    const notes = timelineNotes(placed, queue);
    expect(notes.map((n) => n.fact)).to.deep.equal(["pod", "credentials", "node"]);
    expect(notes[1]?.text).to.include("AWS credentials will not work in this job").and.include("AccessDenied");
  });
});

describe("afterReserve", () => {
  it("discards only records never confirmed, releases held-back pods, and issues tokens to the reserved", () => {
    const pending = { [ANNOTATIONS.stack]: "k", [ANNOTATIONS.reservation]: RESERVATION_PENDING };
    const withToken = { [ANNOTATIONS.stack]: "k", [ANNOTATIONS.agentTokenSecret]: "t" };
    const freshWon = job("fresh-won", {}, withToken);
    const freshLost = job("fresh-lost", {}, withToken);
    const heldPendingWon = job("held-pending-won", {}, pending);
    const heldPendingLost = job("held-pending-lost", {}, pending);
    const heldRunning = job("held-running", { phase: "Running" }, withToken);
    const out = afterReserve(
      [freshWon, freshLost],
      [heldPendingWon, heldPendingLost, heldRunning],
      new Set(["fresh-won", "held-pending-won"]),
    );
    expect(
      out.discard.map((j) => j.spec.uuid),
      "a held job not reserved any more may be running: kept",
    ).to.deep.equal(["fresh-lost", "held-pending-lost"]);
    expect(out.release.map((j) => j.spec.uuid)).to.deep.equal(["held-pending-won"]);
    expect(out.issue.map((j) => j.spec.uuid)).to.deep.equal(["fresh-won"]);
  });
});
