import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { podStatus, type ContainerFacts, type PodFacts } from "./kubelet-status.js";

const pod: V1Pod = {
  metadata: { name: "p" },
  spec: {
    initContainers: [
      { name: "copy-agent", image: "agent" },
      { name: "db", image: "postgres", restartPolicy: "Always" },
    ],
    containers: [
      { name: "agent", image: "agent" },
      { name: "command", image: "alpine" },
    ],
  },
};
const t0 = new Date(0);
const t1 = new Date(1000);

function facts(containers: ContainerFacts[], extra: Partial<PodFacts> = {}): PodFacts {
  return { startedAt: t0, containers: new Map(containers.map((c) => [c.name, c])), ended: false, ...extra };
}
const states = (status: ReturnType<typeof podStatus>): string[] =>
  [...(status.initContainerStatuses ?? []), ...(status.containerStatuses ?? [])].map(
    (s) => `${s.name}:${Object.keys(s.state ?? {}).join()}`,
  );
const condition = (status: ReturnType<typeof podStatus>, type: string): string | undefined =>
  status.conditions?.find((c) => c.type === type)?.status;

describe("kubelet status", () => {
  it("is Pending while init containers run; the others wait with PodInitializing", () => {
    const status = podStatus(pod, facts([{ name: "copy-agent", startedAt: t0 }]));
    expect(status.phase).to.equal("Pending");
    expect(states(status)).to.deep.equal(["copy-agent:running", "db:waiting", "agent:waiting", "command:waiting"]);
    expect(status.containerStatuses?.[0]?.state?.waiting?.reason).to.equal("PodInitializing");
    expect(condition(status, "Initialized")).to.equal("False");
    expect(status.podIP).to.equal("127.0.0.1");
  });

  it("is Running once init is done and a sidecar runs; Ready while every container runs", () => {
    const running: ContainerFacts[] = [
      { name: "copy-agent", startedAt: t0, finishedAt: t0, exitCode: 0 },
      { name: "db", startedAt: t0 },
      { name: "agent", startedAt: t0 },
      { name: "command", startedAt: t0 },
    ];
    const status = podStatus(pod, facts(running));
    expect(status.phase).to.equal("Running");
    expect(condition(status, "Initialized")).to.equal("True");
    expect(condition(status, "Ready")).to.equal("True");
    expect(status.initContainerStatuses?.map((s) => [s.ready, s.started])).to.deep.equal([
      [true, false],
      [true, true],
    ]);
    const oneDone = podStatus(pod, facts([...running.slice(0, 3), { name: "command", startedAt: t0, exitCode: 0 }]));
    expect(oneDone.phase).to.equal("Running");
    expect(oneDone.conditions?.find((c) => c.type === "Ready")).to.include({
      status: "False",
      reason: "ContainersNotReady",
    });
  });

  it("ends Succeeded only if every regular container exited 0 (sidecars do not count), else Failed", () => {
    const ended = (command: number, extra: Partial<PodFacts> = {}): ReturnType<typeof podStatus> =>
      podStatus(
        pod,
        facts(
          [
            { name: "copy-agent", startedAt: t0, finishedAt: t0, exitCode: 0 },
            { name: "db", startedAt: t0, finishedAt: t1, exitCode: 137 },
            { name: "agent", startedAt: t0, finishedAt: t1, exitCode: 0 },
            { name: "command", startedAt: t0, finishedAt: t1, exitCode: command },
          ],
          { ended: true, ...extra },
        ),
      );
    expect(ended(0).phase).to.equal("Succeeded");
    expect(ended(0).initContainerStatuses?.[1]?.state?.terminated).to.include({ exitCode: 137, reason: "Error" });
    expect(ended(2).phase).to.equal("Failed");
    expect(ended(2).containerStatuses?.[1]?.state?.terminated).to.include({ exitCode: 2, reason: "Error" });
    expect(ended(0, { deadlineExceeded: true })).to.include({ phase: "Failed", reason: "DeadlineExceeded" });
    expect(ended(0).conditions?.find((c) => c.type === "Ready")).to.include({ reason: "PodCompleted" });
  });

  it("shows a container that cannot be configured waiting with its reason; a pod without init containers has no init statuses", () => {
    const single: V1Pod = { spec: { containers: [{ name: "agent", image: "agent" }] } };
    const waiting = { reason: "CreateContainerConfigError", message: 'secret "t" not found' };
    const status = podStatus(single, facts([{ name: "agent", waiting }], { startedAt: undefined }));
    expect(status.phase).to.equal("Pending");
    expect(status.containerStatuses?.[0]?.state?.waiting).to.deep.equal(waiting);
    expect(status).to.not.have.property("initContainerStatuses");
    expect(status).to.not.have.property("startTime");
  });

  it("keeps a condition's lastTransitionTime while its status stays", () => {
    const before = new Date(5);
    const seen: V1Pod = {
      status: { conditions: [{ type: "PodScheduled", status: "True", lastTransitionTime: before }] },
    };
    const status = podStatus(seen, facts([]));
    expect(status.conditions?.find((c) => c.type === "PodScheduled")?.lastTransitionTime).to.equal(before);
  });
});
