import { expect } from "chai";
import { jobFixture } from "../../../test/support/fixtures.js";
import type { BuildkiteJob, BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import { ANNOTATIONS } from "../api/keys.js";
import { jobResourceName } from "../api/names.js";
import { planDeletion } from "./deletion.js";

const job = (
  uuid: string,
  status: BuildkiteJobStatus,
  annotations: Record<string, string> = { [ANNOTATIONS.stack]: "k" },
): BuildkiteJob => {
  const j = jobFixture(uuid);
  j.metadata.annotations = annotations;
  j.status = status;
  return j;
};

describe("planDeletion", () => {
  it("tells every unended job to stop once, and holds while pods, unended jobs or unreported jobs remain", () => {
    const running = job("a", { phase: "Running", podUID: "u" });
    const told = job("b", { phase: "Pending" }, { [ANNOTATIONS.stack]: "k", [ANNOTATIONS.stop]: "deleted" });
    const unreported = job("c", { phase: "Failed", reason: "ImagePullFailed" });
    const plan = planDeletion({ jobs: [running, told, unreported], pods: 1, reporting: true });
    expect(plan.stop).to.deep.equal([jobResourceName("a")]);
    expect(plan.wait).to.equal(
      "Stopping the queue's jobs before its NetworkPolicy goes: 1 pods, 2 jobs not ended, 1 not yet reported to Buildkite.",
    );
  });

  it("waits for reports only while the stack can take them, and lets go once nothing is left", () => {
    const unreported = job("c", { phase: "Failed", reason: "ImagePullFailed" });
    expect(planDeletion({ jobs: [unreported], pods: 0, reporting: true }).wait).to.include("1 not yet reported");
    expect(planDeletion({ jobs: [unreported], pods: 0, reporting: false })).to.deep.equal({ stop: [] });
    expect(planDeletion({ jobs: [job("d", { phase: "Succeeded" })], pods: 0, reporting: true })).to.deep.equal({
      stop: [],
    });
  });
});
