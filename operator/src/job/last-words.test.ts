import type { V1ContainerStatus, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { queueFixture } from "../../../test/support/fixtures.js";
import { lastWordsSource, withLastWords } from "./last-words.js";
import { podOutcome } from "./phase.js";
import { stuckPod } from "./stuck.js";

const status = (
  name: string,
  state: NonNullable<V1ContainerStatus["state"]>,
  containerID?: string,
  lastState?: NonNullable<V1ContainerStatus["lastState"]>,
): V1ContainerStatus => ({
  name,
  image: `${name}-image`,
  imageID: "",
  ready: false,
  restartCount: 0,
  state,
  ...(containerID ? { containerID } : {}),
  ...(lastState ? { lastState } : {}),
});
const exited = (exitCode: number) => ({ terminated: { exitCode, reason: exitCode === 0 ? "Completed" : "Error" } });
const pod = (s: NonNullable<V1Pod["status"]>): V1Pod => ({
  metadata: { name: "p", creationTimestamp: new Date("2026-03-01T12:00:00Z") },
  spec: { containers: [{ name: "agent" }], nodeName: "n" },
  status: s,
});

describe("a failed pod's own words", () => {
  it("ends the job when the agent exits, though services and clients still run", () => {
    const running = (code: number) =>
      podOutcome(
        pod({
          phase: "Running",
          containerStatuses: [status("agent", exited(code)), status("command", { running: {} })],
        }),
        undefined,
      );
    expect(running(0)).to.include({ phase: "Succeeded", exitCode: 0 });
    expect(running(3)).to.include({ phase: "Failed", exitCode: 3, reason: "NonZeroExit" });
  });

  it("names an init container that failed before the agent started", () => {
    const outcome = podOutcome(
      pod({
        phase: "Failed",
        initContainerStatuses: [status("copy-agent", exited(0)), status("image-check", exited(127))],
        containerStatuses: [status("agent", { waiting: { reason: "PodInitializing" } })],
      }),
      undefined,
    );
    expect(outcome).to.include({ phase: "Failed", reason: "InitContainerFailed" });
    expect(outcome.message).to.include("image-check").and.include("127");
  });

  it("fails a pod whose service keeps exiting before the job could start, after the start grace", () => {
    const stuck = stuckPod(
      pod({
        phase: "Pending",
        initContainerStatuses: [
          status("copy-agent", exited(0)),
          status("sidecar-0", { waiting: { reason: "CrashLoopBackOff" } }, undefined, { terminated: { exitCode: 3 } }),
        ],
      }),
      queueFixture(),
      { pendingTimeoutSeconds: 600, startGraceSeconds: 120 },
      new Date("2026-03-01T12:03:00Z"),
    );
    expect(stuck).to.have.property("reason", "InitContainerFailed");
    expect(stuck).to.have.property("message").that.includes("sidecar-0").and.includes("exit 3");
  });

  it("fails a pod whose step image cannot be pulled, pointing at the step's image:", () => {
    const stuck = stuckPod(
      pod({
        phase: "Pending",
        initContainerStatuses: [
          status("copy-agent", exited(0)),
          status("image-check", { waiting: { reason: "ImagePullBackOff", message: "not found" } }),
        ],
      }),
      queueFixture(),
      { pendingTimeoutSeconds: 600, startGraceSeconds: 120 },
      new Date("2026-03-01T12:03:00Z"),
    );
    expect(stuck).to.have.property("reason", "ImagePullFailed");
    expect(stuck).to.have.property("message").that.includes("image-check-image").and.includes("the step's image:");
  });

  it("reads the log of a failed init container, else of a failed agent, and only of containers a runtime ran", () => {
    const id = "containerd://abc";
    expect(
      lastWordsSource(
        pod({
          initContainerStatuses: [status("copy-agent", exited(1), id)],
          containerStatuses: [status("agent", exited(1), id)],
        }),
      ),
    ).to.deep.equal({ container: "copy-agent", previous: false });
    expect(lastWordsSource(pod({ containerStatuses: [status("agent", exited(1), id)] }))).to.deep.equal({
      container: "agent",
      previous: false,
    });
    const crashing: V1ContainerStatus = status("sidecar-0", { waiting: { reason: "CrashLoopBackOff" } }, undefined, {
      terminated: { exitCode: 3, containerID: id },
    });
    expect(lastWordsSource(pod({ initContainerStatuses: [crashing] })), "a crash-looping service").to.deep.equal({
      container: "sidecar-0",
      previous: true,
    });
    expect(lastWordsSource(pod({ containerStatuses: [status("agent", exited(0), id)] }))).to.equal(undefined);
    expect(lastWordsSource(pod({ containerStatuses: [status("agent", exited(1))] })), "no runtime").to.equal(undefined);
  });

  it("adds the last lines to the status message, within bounds", () => {
    const log = Array.from({ length: 40 }, (_, i) => `line ${i}\r`).join("\n");
    const message = withLastWords({ message: "The agent exited with code 1." }, "agent", log).message ?? "";
    expect(message).to.match(/^The agent exited with code 1\.\nLast lines of container agent:\nline 25\n/);
    expect(message).to.include("line 39").and.not.include("line 24\n").and.not.include("\r");
    expect(withLastWords({ message: "m" }, "agent", "\n\n").message).to.equal("m");
  });
});
