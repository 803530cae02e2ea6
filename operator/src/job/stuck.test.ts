import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { queueFixture } from "../../../test/support/fixtures.js";
import { stuckPod } from "./stuck.js";

const created = new Date("2026-03-01T12:00:00Z");
const after = (s: number): Date => new Date(created.getTime() + s * 1000);
const timeouts = { pendingTimeoutSeconds: 600, startGraceSeconds: 120 };
const pod = (status: NonNullable<V1Pod["status"]>, nodeName?: string): V1Pod => ({
  metadata: { name: "p", creationTimestamp: created },
  spec: { containers: [{ name: "agent", image: "img" }], ...(nodeName ? { nodeName } : {}) },
  status,
});
const waiting = (reason: string) => ({
  containerStatuses: [
    {
      name: "agent",
      image: "img",
      imageID: "",
      ready: false,
      restartCount: 0,
      state: { waiting: { reason, message: `${reason} details` } },
    },
  ],
});

describe("stuckPod", () => {
  for (const reason of ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"]) {
    it(`fails a pod in ${reason} after the start grace, naming the image and what to check`, () => {
      const p = pod(waiting(reason), "node-1");
      expect(stuckPod(p, queueFixture(), timeouts, after(60))).to.deep.equal({ recheckAfterMs: 60_000 });
      const stuck = stuckPod(p, queueFixture(), timeouts, after(120));
      expect(stuck).to.have.property("reason", "ImagePullFailed");
      expect(stuck)
        .to.have.property("message")
        .that.includes("img")
        .and.includes("container agent")
        .and.includes("spec.agentImage")
        .and.includes("imagePullSecrets")
        .and.includes(`${reason} details`);
    });
  }

  it("fails a pod whose container cannot be configured (a missing Secret) after the start grace", () => {
    const stuck = stuckPod(pod(waiting("CreateContainerConfigError"), "node-1"), queueFixture(), timeouts, after(121));
    expect(stuck).to.have.property("reason", "ContainerConfigError");
    expect(stuck).to.have.property("message").that.includes("Secret");
  });

  it("fails an unschedulable pod after the pending timeout, with the scheduler's words and the shape's needs", () => {
    const p = pod({
      phase: "Pending",
      conditions: [
        {
          type: "PodScheduled",
          status: "False",
          reason: "Unschedulable",
          message: "0/4 nodes are available: 4 Insufficient cpu.",
        },
      ],
    });
    expect(stuckPod(p, queueFixture(), timeouts, after(599))).to.deep.equal({ recheckAfterMs: 1_000 });
    const stuck = stuckPod(p, queueFixture(), timeouts, after(600));
    expect(stuck).to.have.property("reason", "Unschedulable");
    expect(stuck)
      .to.have.property("message")
      .that.includes("4 Insufficient cpu")
      .and.includes("4 vCPU")
      .and.includes("linux/amd64");
  });

  it("fails a placed pod that never starts after the pending timeout", () => {
    const stuck = stuckPod(pod(waiting("ContainerCreating"), "node-1"), queueFixture(), timeouts, after(601));
    expect(stuck).to.have.property("reason", "PendingTimeout");
    expect(stuck).to.have.property("message").that.includes("node-1").and.includes("ContainerCreating");
  });

  it("asks to look again when the earliest deadline passes", () => {
    expect(stuckPod(pod({ phase: "Pending" }), queueFixture(), timeouts, after(100))).to.deep.equal({
      recheckAfterMs: 500_000,
    });
  });
});
