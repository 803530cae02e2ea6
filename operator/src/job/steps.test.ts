import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import type { BuildkiteJob, BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { planJob } from "./plan.js";
import { buildPod } from "./pod-builder.js";
import {
  afterPodCreate,
  CLAIM_WAIT_MS,
  mustConfirmPodGone,
  needsLiveRead,
  progressDelayMs,
  PROGRESS_WRITE_INTERVAL_MS,
  slotToHold,
} from "./steps.js";

const clock = new FakeClock(new Date("2026-03-01T12:00:00Z"));
const queue = (() => {
  const q = queueFixture();
  q.status = {
    conditions: [
      { type: "Ready", status: "True", reason: "Ready", message: "ok", lastTransitionTime: clock.now().toISOString() },
    ],
  };
  return q;
})();
const jobWith = (status?: BuildkiteJobStatus): BuildkiteJob => ({ ...jobFixture(), ...(status ? { status } : {}) });
function podOf(job: BuildkiteJob, slot: number, phase = "Running"): V1Pod {
  const pod = buildPod(queue, job, slot);
  pod.status = { phase };
  return pod;
}

describe("job controller steps", () => {
  describe("needsLiveRead", () => {
    it("reads the job live before creating its pod, and before failing it for a vanished pod: neither can be undone", () => {
      const create = planJob({ job: jobWith(), queue, pod: undefined, slot: { slot: 0 } }, clock.now());
      expect(needsLiveRead(create)).to.equal(true);
      const vanished = planJob(
        {
          job: jobWith({ phase: "Running", podName: "p", podUID: "u", slot: 0 }),
          queue,
          pod: undefined,
          slot: { slot: 0 },
        },
        clock.now(),
      );
      expect(vanished.status.reason).to.equal("PodDeleted");
      expect(needsLiveRead(vanished)).to.equal(true);
    });

    it("plans on the cache for everything else: waiting, following a pod, a pod gone before start", () => {
      expect(
        needsLiveRead(
          planJob({ job: jobWith(), queue, pod: undefined, slot: { waiting: { position: 1, free: 0 } } }, clock.now()),
        ),
      ).to.equal(false);
      const job = jobWith({ phase: "Starting", podUID: "u", slot: 0 });
      expect(needsLiveRead(planJob({ job, queue, pod: podOf(job, 0), slot: { slot: 0 } }, clock.now()))).to.equal(
        false,
      );
      const early = planJob(
        {
          job: jobWith({ phase: "Pending", podName: "p", podUID: "u", slot: 0 }),
          queue,
          pod: undefined,
          slot: { slot: 0 },
        },
        clock.now(),
      );
      expect(early.status.reason).to.equal("PodDeletedBeforeStart");
      expect(needsLiveRead(early)).to.equal(false);
    });
  });

  describe("mustConfirmPodGone", () => {
    it("confirms live only a pod the job recorded, missing from the cache, while the job has not ended", () => {
      const job = jobWith({ phase: "Running", podUID: "u" });
      expect(mustConfirmPodGone(job, undefined)).to.equal(true);
      expect(mustConfirmPodGone(job, podOf(job, 0))).to.equal(false);
      expect(mustConfirmPodGone(jobWith({ phase: "Pending" }), undefined)).to.equal(false);
      expect(mustConfirmPodGone(jobWith({ phase: "Pending", podUID: "" }), undefined)).to.equal(false);
      expect(mustConfirmPodGone(jobWith({ phase: "Succeeded", podUID: "u" }), undefined)).to.equal(false);
    });
  });

  describe("slotToHold", () => {
    it("sets aside the slot of a pod about to be created that the caches do not show the job holding", () => {
      const plan = planJob({ job: jobWith(), queue, pod: undefined, slot: { slot: 2 } }, clock.now());
      expect(slotToHold(plan, undefined)).to.equal(2);
      expect(slotToHold(plan, 2), "already on the job or its pod").to.equal(undefined);
    });

    it("sets nothing aside (and gives back what was) when no pod is to be created", () => {
      const waiting = planJob(
        { job: jobWith(), queue, pod: undefined, slot: { waiting: { position: 1, free: 0 } } },
        clock.now(),
      );
      expect(slotToHold(waiting, undefined)).to.equal(undefined);
      const canceled = jobWith();
      canceled.metadata.annotations = { "buildkite.com/buildkite-state": "canceled" };
      expect(
        slotToHold(planJob({ job: canceled, queue, pod: undefined, slot: { slot: 0 } }, clock.now()), undefined),
      ).to.equal(undefined);
    });
  });

  describe("afterPodCreate", () => {
    const creating = planJob({ job: jobWith(), queue, pod: undefined, slot: { slot: 1 } }, clock.now()).status;

    it("records the pod on the job, keeping its slot", () => {
      const pod: V1Pod = { metadata: { name: "bkj-x", uid: "pod-uid" } };
      const after = afterPodCreate(creating, { pod }, clock.now());
      expect(after).to.deep.equal({
        status: { ...creating, podName: "bkj-x", podUID: "pod-uid", podCreatedAt: "2026-03-01T12:00:00.000Z" },
        events: [],
      });
    });

    it("fails the job a refused pod belongs to, with the API server's words, an Event, and its end time", () => {
      const after = afterPodCreate(
        creating,
        { rejected: 'The API server refused the job\'s pod: pods "bkj-x" is forbidden: violates PodSecurity' },
        clock.now(),
      );
      if (!("status" in after)) throw new Error("expected a status");
      expect(after.status).to.include({
        phase: "Failed",
        reason: "PodRejected",
        finishedAt: "2026-03-01T12:00:00.000Z",
        slot: 1,
      });
      expect(after.status.message).to.equal(
        "The API server refused the job's pod: pods \"bkj-x\" is forbidden: violates PodSecurity. Fix the queue's settings (or the namespace's policies); the job was not run.",
      );
      expect(after.events).to.deep.equal([{ type: "Warning", reason: "PodRejected", message: after.status.message }]);
    });

    it("waits, writing nothing, while one of its cache claims is being deleted", () => {
      expect(afterPodCreate(creating, { wait: "cache claim c is being deleted" }, clock.now())).to.deep.equal({
        waitMs: CLAIM_WAIT_MS,
        why: "cache claim c is being deleted",
      });
    });
  });

  describe("progressDelayMs", () => {
    const created: BuildkiteJobStatus = {
      phase: "Pending",
      slot: 0,
      podName: "bkj-x",
      podUID: "u1",
      reason: "PodCreated",
    };
    const t = clock.now().getTime();
    const plan = (status: BuildkiteJobStatus, actions: ("deletePod" | "createPod")[] = []) => ({
      status,
      actions,
      events: [],
    });

    it("holds back a pod's progress written less than a second ago, until a second has passed", () => {
      const running = { ...created, phase: "Running" as const, reason: "Running" };
      expect(progressDelayMs(plan(running), created, t - 300, t)).to.equal(PROGRESS_WRITE_INTERVAL_MS - 300);
      expect(progressDelayMs(plan(running), created, t - PROGRESS_WRITE_INTERVAL_MS, t)).to.equal(0);
    });

    it("writes at once the outcome, a stop, a new pod or condition, a plan with actions, and after a restart", () => {
      const ended = { ...created, phase: "Succeeded" as const, reason: "Completed" };
      const condition = {
        type: "QueueReady",
        status: "True" as const,
        reason: "QueueReady",
        message: "ok",
        lastTransitionTime: "",
      };
      const cases: [BuildkiteJobStatus, BuildkiteJobStatus, ("deletePod" | "createPod")[], number | undefined][] = [
        [ended, created, [], t],
        [{ ...created, phase: "Running", reason: "Stopping" }, created, [], t],
        [{ ...created, podUID: "u2" }, created, [], t],
        [{ ...created, phase: "Running", conditions: [condition] }, created, [], t],
        [{ ...created, phase: "Running" }, created, ["deletePod"], t],
        [{ ...created, phase: "Running" }, created, [], undefined],
        [created, { phase: "Pending", slot: 0, reason: "CreatingPod" }, [], t],
      ];
      for (const [status, stored, actions, written] of cases)
        expect(progressDelayMs(plan(status, actions), stored, written, t), JSON.stringify(status)).to.equal(0);
    });
  });
});
