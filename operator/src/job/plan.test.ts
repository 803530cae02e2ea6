import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import type { BuildkiteJob, BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { ANNOTATIONS } from "../api/keys.js";
import {
  needsReport,
  planJob,
  reportAnnotation,
  reportOf,
  REPORTED,
  RESERVATION_PENDING,
  RESERVING_QUIET_MS,
} from "./plan.js";

const now = new Date("2026-03-01T12:00:00Z");
const readyQueue = (): BuildkiteQueue => {
  const q = queueFixture();
  q.status = {
    conditions: [
      { type: "Ready", status: "True", reason: "Ready", message: "ok", lastTransitionTime: now.toISOString() },
    ],
  };
  return q;
};
const jobWith = (status: BuildkiteJobStatus = {}): BuildkiteJob => ({ ...jobFixture(), status });
const podOf = (job: BuildkiteJob, status: NonNullable<V1Pod["status"]>, nodeName?: string): V1Pod => ({
  metadata: {
    name: job.metadata.name ?? "",
    uid: "pod-uid",
    ownerReferences: [
      { apiVersion: "v1", kind: "BuildkiteJob", name: "x", uid: job.metadata.uid ?? "", controller: true },
    ],
  },
  spec: { containers: [{ name: "agent" }], ...(nodeName ? { nodeName } : {}) },
  status,
});
const terminated = (exitCode: number, reason = "Error") => ({
  containerStatuses: [
    {
      name: "agent",
      image: "i",
      imageID: "",
      ready: false,
      restartCount: 0,
      state: { terminated: { exitCode, reason, finishedAt: new Date("2026-03-01T11:59:00Z") } },
    },
  ],
});

const free = { slot: 0 } as const;

describe("planJob", () => {
  it("creates the pod of a new job whose queue is ready", () => {
    const plan = planJob({ job: jobWith(), queue: readyQueue(), pod: undefined, slot: free }, now);
    expect(plan.actions).to.deep.equal(["createPod"]);
    expect(plan.status).to.include({ phase: "Pending", shape: "LINUX_AMD64_4X16", slot: 0 });
  });

  it("fails a job whose step asks for what its queue does not allow: no pod, a warning, and Buildkite is told", () => {
    const base = jobWith();
    const job: BuildkiteJob = {
      ...base,
      metadata: { name: base.metadata.name ?? "", uid: "u", annotations: { [ANNOTATIONS.stack]: "stack-1" } },
      spec: { ...base.spec, step: { kubernetes: { podSpecPatch: {} } } },
    };
    const plan = planJob(
      { job, queue: readyQueue(), pod: undefined, slot: { waiting: { position: 1, free: 0 } } },
      now,
    );
    expect(plan.actions).to.deep.equal([]);
    expect(plan.status).to.include({ phase: "Failed", reason: "StepRefused" });
    expect(plan.status.message).to.include("podSpecPatch");
    expect(plan.events).to.deep.equal([{ type: "Warning", reason: "StepRefused", message: plan.status.message }]);
    expect(needsReport({ ...job, status: plan.status })).to.equal(true);
  });

  it("keeps a job waiting, saying why, while every slot of its queue is in use", () => {
    const plan = planJob(
      { job: jobWith(), queue: readyQueue(), pod: undefined, slot: { waiting: { position: 2, free: 0 } } },
      now,
    );
    expect(plan.actions).to.deep.equal([]);
    expect(plan.status).to.include({ phase: "Pending", reason: "WaitingForSlot" });
    expect(plan.status.message).to.equal(
      "All 4 slots of queue linux are in use; waiting jobs start by priority, then age.",
    );
  });

  it("waits with a condition when the queue does not exist, and when it is not ready", () => {
    const missing = planJob({ job: jobWith(), queue: undefined, pod: undefined, slot: free }, now);
    expect(missing.actions).to.deep.equal([]);
    expect(missing.status.conditions?.[0]).to.include({ type: "QueueReady", status: "False", reason: "QueueNotFound" });
    expect(missing.events[0]?.reason).to.equal("QueueNotFound");
    const notReady = queueFixture();
    notReady.status = {
      conditions: [
        {
          type: "Ready",
          status: "False",
          reason: "AgentTokenSecretMissing",
          message: "Secret bk-agent-token not found",
          lastTransitionTime: now.toISOString(),
        },
      ],
    };
    const plan = planJob({ job: jobWith(), queue: notReady, pod: undefined, slot: free }, now);
    expect(plan.status.message).to.match(/not ready: Secret bk-agent-token not found/);
    expect(plan.requeueAfterMs).to.be.greaterThan(0);
  });

  it("takes the slot and shape from the job's pod when its status lost them (the write after the pod's create), and keeps a recorded slot", () => {
    const job = jobWith({ phase: "Pending", reason: "WaitingForSlot", shape: "LINUX_AMD64_2X4" });
    const pod = podOf(job, { phase: "Running", startTime: now }, "node-a");
    if (pod.metadata) pod.metadata.labels = { "buildkite.com/slot": "2", "buildkite.com/shape": "LINUX_AMD64_4X16" };
    const plan = planJob({ job, queue: readyQueue(), pod, slot: { waiting: { position: 1, free: 0 } } }, now);
    expect(plan.actions).to.deep.equal([]);
    expect(plan.status).to.include({ phase: "Running", slot: 2, shape: "LINUX_AMD64_4X16", podUID: "pod-uid" });
    const recorded = jobWith({ phase: "Running", podUID: "pod-uid", slot: 1, shape: "LINUX_AMD64_2X4" });
    expect(planJob({ job: recorded, queue: readyQueue(), pod, slot: free }, now).status).to.include({
      slot: 1,
      shape: "LINUX_AMD64_2X4",
    });
  });

  it("follows the pod: unschedulable → Pending with the scheduler's words, placed → Starting, Running (no Event)", () => {
    const job = jobWith({ phase: "Pending", podUID: "pod-uid" });
    const unschedulable = planJob(
      {
        job,
        queue: readyQueue(),
        pod: podOf(job, {
          phase: "Pending",
          conditions: [
            {
              type: "PodScheduled",
              status: "False",
              reason: "Unschedulable",
              message: "0/4 nodes are available: 4 Insufficient cpu.",
            },
          ],
        }),
        slot: free,
      },
      now,
    );
    expect(unschedulable.status).to.include({ phase: "Pending", reason: "Unschedulable" });
    expect(unschedulable.status.message).to.match(/Insufficient cpu/);
    expect(
      planJob({ job, queue: readyQueue(), pod: podOf(job, { phase: "Pending" }, "node-a"), slot: free }, now).status,
    ).to.include({ phase: "Starting", nodeName: "node-a" });
    const running = planJob(
      { job, queue: readyQueue(), pod: podOf(job, { phase: "Running", startTime: now }, "node-a"), slot: free },
      now,
    );
    expect(running.status).to.include({ phase: "Running", startedAt: now.toISOString() });
    // Routine steps are in the status; only the outcome is an Event.
    expect(running.events).to.deep.equal([]);
  });

  it("records exit 0 and deletes the pod when it succeeds", () => {
    const job = jobWith({ phase: "Running", podUID: "pod-uid" });
    const plan = planJob(
      {
        job,
        queue: readyQueue(),
        pod: podOf(job, { phase: "Succeeded", ...terminated(0, "Completed") }, "node-a"),
        slot: free,
      },
      now,
    );
    expect(plan.status).to.include({ phase: "Succeeded", exitCode: 0, finishedAt: "2026-03-01T11:59:00.000Z" });
    expect(plan.actions).to.deep.equal(["deletePod"]);
    expect(plan.events.map((e) => [e.type, e.reason])).to.deep.equal([["Normal", "Succeeded"]]);
  });

  it("deletes a finished job's pod once: a pod already terminating is waited for, and the TTL starts after it", () => {
    const job = jobWith({ phase: "Succeeded", podUID: "pod-uid", finishedAt: "2026-03-01T10:00:00.000Z" });
    const pod = podOf(job, { phase: "Succeeded", ...terminated(0, "Completed") }, "node-a");
    const ready = { ...readyQueue(), spec: { ...readyQueue().spec, jobTTLSecondsAfterFinished: 0 } };
    expect(planJob({ job, queue: ready, pod, slot: free }, now).actions).to.deep.equal(["deletePod"]);
    (pod.metadata ??= {}).deletionTimestamp = new Date(now.getTime() - 1_000);
    expect(planJob({ job, queue: ready, pod, slot: free }, now).actions).to.deep.equal([]);
    expect(planJob({ job, queue: ready, pod: undefined, slot: free }, now).actions).to.deep.equal(["deleteJob"]);
  });

  it("records a non-zero exit as Failed with its code", () => {
    const job = jobWith({ phase: "Running", podUID: "pod-uid" });
    const plan = planJob(
      { job, queue: readyQueue(), pod: podOf(job, { phase: "Failed", ...terminated(3) }, "node-a"), slot: free },
      now,
    );
    expect(plan.status).to.include({ phase: "Failed", exitCode: 3, reason: "NonZeroExit" });
    expect(plan.events[0]).to.include({ type: "Warning", reason: "NonZeroExit" });
  });

  it("turns an exceeded deadline into TimedOut and OOM into advice on the shape", () => {
    const job = jobWith({ phase: "Running", podUID: "pod-uid" });
    const timedOut = planJob(
      {
        job,
        queue: readyQueue(),
        pod: podOf(job, { phase: "Failed", reason: "DeadlineExceeded", ...terminated(137) }),
        slot: free,
      },
      now,
    );
    expect(timedOut.status).to.include({ phase: "TimedOut", reason: "DeadlineExceeded" });
    expect(timedOut.status.message).to.match(/maxJobDurationSeconds \(28800 s\)/);
    const oom = planJob(
      { job, queue: readyQueue(), pod: podOf(job, { phase: "Failed", ...terminated(137, "OOMKilled") }), slot: free },
      now,
    );
    expect(oom.status).to.include({ phase: "Failed", reason: "OOMKilled" });
  });

  it("fails a job whose pod was deleted from under it, without re-running it", () => {
    const plan = planJob(
      {
        job: jobWith({ phase: "Running", podName: "p", podUID: "pod-uid" }),
        queue: readyQueue(),
        pod: undefined,
        slot: free,
      },
      now,
    );
    expect(plan.status).to.include({ phase: "Failed", reason: "PodDeleted" });
    expect(plan.actions).to.deep.equal([]);
  });

  it("never adopts a pod owned by another BuildkiteJob of the same name", () => {
    const job = jobWith();
    const stranger = podOf(job, { phase: "Running" });
    (stranger.metadata ??= {}).ownerReferences = [
      { apiVersion: "v1", kind: "BuildkiteJob", name: "x", uid: "someone-else", controller: true },
    ];
    const plan = planJob({ job, queue: readyQueue(), pod: stranger, slot: free }, now);
    expect(plan.actions).to.deep.equal([]);
    expect(plan.status.reason).to.equal("WaitingForOldPod");
  });

  describe("when its queue is deleted (the stop annotation)", () => {
    const stopped = (status: BuildkiteJobStatus = {}): BuildkiteJob => {
      const j = jobWith(status);
      j.metadata.annotations = {
        [ANNOTATIONS.stop]: "BuildkiteQueue ci/linux was deleted.",
        [ANNOTATIONS.stack]: "stack",
      };
      return j;
    };
    it("deletes a running pod first, and keeps the job open until the pod is gone", () => {
      const job = stopped({ phase: "Running", podUID: "pod-uid", podName: "p" });
      const plan = planJob({ job, queue: readyQueue(), pod: podOf(job, { phase: "Running" }), slot: free }, now);
      expect(plan.actions).to.deep.equal(["deletePod"]);
      expect(plan.status).to.include({ phase: "Running", reason: "Stopping" });
    });
    it("ends the job Canceled once the pod is gone (never PodDeleted), and reports it to Buildkite only if it never started", () => {
      const plan = planJob(
        {
          job: stopped({ phase: "Running", podUID: "pod-uid", podName: "p", startedAt: now.toISOString() }),
          queue: readyQueue(),
          pod: undefined,
          slot: free,
        },
        now,
      );
      expect(plan.status).to.include({ phase: "Canceled", reason: "QueueDeleted" });
      expect(plan.status.message).to.equal("BuildkiteQueue ci/linux was deleted. Its pod was stopped.");
      expect(needsReport({ ...stopped(), status: plan.status }), "a job whose agent ran").to.equal(false);
      const waiting = planJob(
        {
          job: stopped({ phase: "Pending", reason: "WaitingForSlot" }),
          queue: readyQueue(),
          pod: undefined,
          slot: free,
        },
        now,
      );
      expect(waiting.actions).to.deep.equal([]);
      expect(waiting.status).to.include({ phase: "Canceled", reason: "QueueDeleted" });
      expect(needsReport({ ...stopped(), status: waiting.status }), "a job that never started").to.equal(true);
    });
  });

  it("keeps a finished job for its TTL, then deletes it", () => {
    const finishedAt = new Date(now.getTime() - 1000 * 1000).toISOString();
    const kept = planJob(
      { job: jobWith({ phase: "Succeeded", finishedAt }), queue: readyQueue(), pod: undefined, slot: free },
      now,
    );
    expect(kept.actions).to.deep.equal([]);
    expect(kept.requeueAfterMs).to.equal(2600 * 1000);
    const expired = planJob(
      {
        job: jobWith({ phase: "Succeeded", finishedAt: new Date(now.getTime() - 3600 * 1000).toISOString() }),
        queue: readyQueue(),
        pod: undefined,
        slot: free,
      },
      now,
    );
    expect(expired.actions).to.deep.equal(["deleteJob"]);
  });

  describe("with Buildkite", () => {
    const fromStack = (status: BuildkiteJobStatus = {}, state?: string): BuildkiteJob => {
      const j = jobWith(status);
      j.metadata.annotations = {
        [ANNOTATIONS.stack]: "bk-op-x",
        ...(state ? { [ANNOTATIONS.buildkiteState]: state } : {}),
      };
      return j;
    };
    const pending = { phase: "Pending", conditions: [{ type: "PodScheduled", status: "True" }] };

    it("cancels a job Buildkite canceled before it had a pod, without creating one", () => {
      const plan = planJob(
        { job: fromStack({ phase: "Pending" }, "canceled"), queue: readyQueue(), pod: undefined, slot: free },
        now,
      );
      expect(plan.actions).to.deep.equal([]);
      expect(plan.status).to.include({ phase: "Canceled", reason: "CanceledInBuildkite" });
    });

    it("cancels a job whose pod has not started and deletes the pod; an expired one likewise", () => {
      for (const [state, reason] of [
        ["canceled", "CanceledInBuildkite"],
        ["expired", "ExpiredInBuildkite"],
        ["timed_out", "TimedOutInBuildkite"],
      ] as const) {
        const job = fromStack({ phase: "Starting", podUID: "pod-uid" }, state);
        const plan = planJob({ job, queue: readyQueue(), pod: podOf(job, pending, "node-1"), slot: free }, now);
        expect(plan.actions, state).to.deep.equal(["deletePod"]);
        expect(plan.status, state).to.include({ phase: "Canceled", reason });
      }
    });

    it("lets the agent handle a cancel once the pod runs, then records the job as Canceled with its exit code", () => {
      const job = fromStack({ phase: "Running", podUID: "pod-uid" }, "canceling");
      const running = planJob(
        { job, queue: readyQueue(), pod: podOf(job, { phase: "Running" }, "node-1"), slot: free },
        now,
      );
      expect(running.actions).to.deep.equal([]);
      expect(running.status.phase).to.equal("Running");
      const ended = planJob(
        { job, queue: readyQueue(), pod: podOf(job, { phase: "Failed", ...terminated(143) }, "node-1"), slot: free },
        now,
      );
      expect(ended.actions).to.deep.equal(["deletePod"]);
      expect(ended.status).to.include({ phase: "Canceled", reason: "CanceledInBuildkite", exitCode: 143 });
    });

    it("fails a job whose image cannot be pulled past the grace, and reports it to Buildkite once", () => {
      const job = fromStack({ phase: "Starting", podUID: "pod-uid" });
      const pod = podOf(
        job,
        {
          phase: "Pending",
          containerStatuses: [
            {
              name: "agent",
              image: "i",
              imageID: "",
              ready: false,
              restartCount: 0,
              state: { waiting: { reason: "ImagePullBackOff" } },
            },
          ],
        },
        "node-1",
      );
      (pod.metadata ??= {}).creationTimestamp = new Date(now.getTime() - 300_000);
      const plan = planJob(
        { job, queue: readyQueue(), pod, slot: free, timeouts: { pendingTimeoutSeconds: 600, startGraceSeconds: 120 } },
        now,
      );
      expect(plan.actions).to.deep.equal(["deletePod"]);
      expect(plan.status).to.include({ phase: "Failed", reason: "ImagePullFailed" });
      const failed = fromStack(plan.status);
      const unreported = planJob({ job: failed, queue: readyQueue(), pod: undefined, slot: free }, now);
      expect(unreported, "kept, not deleted, until the job source has told Buildkite").to.deep.include({
        actions: [],
        status: failed.status,
      });
      expect(unreported.requeueAfterMs).to.equal(undefined);
      (failed.metadata.annotations ??= {})[ANNOTATIONS.reported] = reportAnnotation("Finished", "Buildkite was told.");
      const recorded = planJob({ job: failed, queue: readyQueue(), pod: undefined, slot: free }, now);
      expect(recorded.status.conditions?.find((c) => c.type === REPORTED)).to.include({
        status: "True",
        reason: "Finished",
        message: "Buildkite was told.",
      });
      expect(recorded.events).to.deep.equal([{ type: "Normal", reason: "Finished", message: "Buildkite was told." }]);
      failed.status = recorded.status;
      expect(needsReport(failed)).to.equal(false);
      expect(
        planJob({ job: failed, queue: readyQueue(), pod: undefined, slot: free }, now).actions,
        "then its TTL runs",
      ).to.deep.equal([]);
    });

    it("records a refused finish as a failed report, and never trusts an annotation it cannot read", () => {
      const failed = fromStack({ phase: "Failed", reason: "ImagePullFailed", finishedAt: now.toISOString() });
      (failed.metadata.annotations ??= {})[ANNOTATIONS.reported] = reportAnnotation(
        "FinishRefused",
        "Buildkite refused to finish the job: 422",
      );
      expect(reportOf(failed)).to.include({ status: "False", reason: "FinishRefused" });
      failed.metadata.annotations[ANNOTATIONS.reported] = "not json";
      expect(reportOf(failed)).to.include({ status: "False", reason: "FinishRefused" });
      expect(reportOf(failed)?.message).to.include("is not the JSON the job source writes");
    });

    it("creates no pod for a job whose reservation Buildkite has not confirmed; says so only after 5 s", () => {
      const job = fromStack({});
      (job.metadata.annotations ??= {})[ANNOTATIONS.reservation] = RESERVATION_PENDING;
      job.metadata.creationTimestamp = new Date(now.getTime() - 2_000);
      const young = planJob({ job, queue: readyQueue(), pod: undefined, slot: free }, now);
      expect(young).to.deep.equal({ status: {}, actions: [], events: [], requeueAfterMs: RESERVING_QUIET_MS - 2_000 });
      job.metadata.creationTimestamp = new Date(now.getTime() - RESERVING_QUIET_MS);
      const plan = planJob({ job, queue: readyQueue(), pod: undefined, slot: free }, now);
      expect(plan.actions).to.deep.equal([]);
      expect(plan.status).to.include({ phase: "Pending", reason: "Reserving" });
    });

    it("reports a pod deleted before it started, but not a job whose command ran or one created by hand", () => {
      const gone = planJob(
        {
          job: fromStack({ phase: "Starting", podUID: "pod-uid", podName: "p" }),
          queue: readyQueue(),
          pod: undefined,
          slot: free,
        },
        now,
      );
      expect(gone.status).to.include({ phase: "Failed", reason: "PodDeletedBeforeStart" });
      expect(needsReport(fromStack(gone.status))).to.equal(true);
      expect(needsReport(fromStack({ phase: "Failed", reason: "NonZeroExit" }))).to.equal(false);
      expect(needsReport(jobWith({ phase: "Failed", reason: "PodRejected" }))).to.equal(false);
    });

    it("looks again when a pod that has not started reaches its deadline", () => {
      const job = fromStack({ phase: "Pending", podUID: "pod-uid" });
      const pod = podOf(job, pending);
      (pod.metadata ??= {}).creationTimestamp = now;
      expect(planJob({ job, queue: readyQueue(), pod, slot: free }, now).requeueAfterMs).to.equal(600_000);
    });
  });
});
