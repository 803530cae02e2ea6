import { expect } from "chai";
import { queueFixture } from "../../../test/support/fixtures.js";
import { onlyCountsChanged, planQueueStatus } from "./status.js";

const now = new Date("2026-03-01T12:00:00Z");

describe("planQueueStatus", () => {
  it("is Ready with the queue's concurrency, slots and arch when nothing is wrong", () => {
    const status = planQueueStatus({ queue: queueFixture(), activeJobs: 3, waitingJobs: 2, secret: "present" }, now);
    expect(status).to.include({
      concurrency: 4,
      active: 3,
      waiting: 2,
      slots: "3/4",
      arch: "amd64",
      serviceAccountName: "bkq-linux",
      observedGeneration: 1,
    });
    expect(status.conditions?.find((c) => c.type === "Ready")).to.include({ status: "True", reason: "Ready" });
  });

  it("says what to fix, most basic first: the endpoint, then the Secret, then a refused child", () => {
    const ready = (obs: Partial<Parameters<typeof planQueueStatus>[0]>) =>
      planQueueStatus(
        { queue: queueFixture(), activeJobs: 0, waitingJobs: 0, secret: "present", ...obs },
        now,
      ).conditions?.find((c) => c.type === "Ready");
    expect(ready({ endpointRefused: "not allowed", secret: "missing" })).to.include({
      reason: "EndpointNotAllowed",
      message: "not allowed",
    });
    expect(ready({ secret: "missing" })?.message).to.include(
      "kubectl create secret generic bk-agent-token -n ci --from-literal=token=<agent token>",
    );
    expect(ready({ secret: "notMarked" })?.message).to.include(
      "kubectl label secret bk-agent-token -n ci buildkite.com/agent-token=true",
    );
    expect(ready({ secret: "missingKey" })).to.include({ reason: "AgentTokenSecretKeyMissing" });
    expect(
      ready({ childError: { kind: "PersistentVolumeClaim", name: "c", message: "no such StorageClass" } }),
    ).to.include({ reason: "ChildRefused" });
  });

  it("carries the Buildkite side's conditions, and drops a CredentialsReady nothing reports any more", () => {
    const queue = queueFixture();
    queue.status = {
      conditions: [
        {
          type: "CredentialsReady",
          status: "False",
          reason: "AccessDenied",
          message: "denied",
          lastTransitionTime: now.toISOString(),
        },
      ],
    };
    const status = planQueueStatus(
      {
        queue,
        activeJobs: 0,
        waitingJobs: 0,
        secret: "present",
        buildkite: [{ type: "Registered", status: "True", reason: "Registered", message: "ok" }],
      },
      now,
    );
    expect(status.conditions?.map((c) => c.type)).to.have.members(["Ready", "Registered"]);
  });

  it("tells a change of the job counts alone from any other change", () => {
    const stored = { concurrency: 4, active: 1, waiting: 0, slots: "1/4", conditions: [] };
    expect(onlyCountsChanged(stored, { ...stored, active: 2, waiting: 3, slots: "2/4" })).to.equal(true);
    expect(onlyCountsChanged(stored, { ...stored, active: 2, slots: "2/4", concurrency: 8 })).to.equal(false);
    expect(
      onlyCountsChanged(stored, {
        ...stored,
        conditions: [{ type: "Ready", status: "True", reason: "Ready", message: "", lastTransitionTime: "" }],
      }),
    ).to.equal(false);
  });
});
