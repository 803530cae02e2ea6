import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { buildPod } from "../../operator/src/job/pod-builder.js";
import {
  agentExitCode,
  agentLaunch,
  PodConfigError,
  runningPatch,
  takes,
  terminatedPatch,
  type SecretReader,
} from "./fast-pod.js";
import { jobFixture, queueFixture } from "./fixtures.js";
import { rolePod } from "./role-pod.js";

const ENDPOINT = "http://fake/v3";
const secrets: SecretReader = (name, key) =>
  Promise.resolve(name === "bk-agent-token" && key === "token" ? "bkct_x" : undefined);

function pod(
  overrides: { annotations?: Record<string, string>; phase?: string; restartPolicy?: string; nodeName?: string } = {},
): V1Pod {
  return {
    metadata: { name: "p", uid: "u1", ...(overrides.annotations ? { annotations: overrides.annotations } : {}) },
    spec: {
      nodeName: overrides.nodeName ?? "n",
      restartPolicy: overrides.restartPolicy ?? "Never",
      containers: [
        { name: "agent", image: "a" },
        { name: "container-0", image: "b" },
      ],
    },
    status: { phase: overrides.phase ?? "Pending" },
  };
}

describe("fast runner pods", () => {
  it("takes annotated pods once bound, and with adoptAll unannotated Running pods that may end", () => {
    expect(takes(pod({ annotations: { "kwok.test/runner": "fast" } }), false)).to.equal(true);
    expect(takes(pod({ annotations: { "kwok.test/runner": "real" } }), true)).to.equal(false);
    expect(takes(pod(), true)).to.equal(false);
    expect(takes(pod({ phase: "Running" }), true)).to.equal(true);
    expect(takes(pod({ phase: "Running" }), false)).to.equal(false);
    expect(takes(pod({ phase: "Running", restartPolicy: "Always" }), true)).to.equal(false);
    expect(takes(pod({ phase: "Succeeded", annotations: { "kwok.test/runner": "fast" } }), false)).to.equal(false);
  });

  it("reads the operator's pod: --acquire-job, the token from its Secret, the queue tag and --reflect-exit-status", async () => {
    const built = buildPod(queueFixture({ endpoint: ENDPOINT }), jobFixture("0190a8f4-52c1-4b8e-9d4a-3f1c2b7e6a10"));
    const launch = await agentLaunch(built, "http://default/v3", secrets);
    expect(launch).to.deep.include({
      container: "agent",
      uuid: "0190a8f4-52c1-4b8e-9d4a-3f1c2b7e6a10",
      token: "bkct_x",
      endpoint: ENDPOINT,
      tags: ["queue=linux"],
      reflect: true,
    });
  });

  it("reads agent-stack-k8s's env form, and fails like the kubelet when a Secret is missing", async () => {
    const p = pod();
    const agent = p.spec?.containers[0];
    if (!agent) throw new Error("no container");
    agent.env = [
      { name: "BUILDKITE_AGENT_ACQUIRE_JOB", value: "j1" },
      { name: "BUILDKITE_AGENT_TAGS", value: "queue=k, os=linux" },
      { name: "BUILDKITE_AGENT_TOKEN", valueFrom: { secretKeyRef: { name: "bk-agent-token", key: "token" } } },
    ];
    expect(await agentLaunch(p, ENDPOINT, secrets)).to.deep.include({
      uuid: "j1",
      token: "bkct_x",
      tags: ["queue=k", "os=linux"],
      endpoint: ENDPOINT,
      reflect: false,
    });
    agent.env[2] = { name: "BUILDKITE_AGENT_TOKEN", valueFrom: { secretKeyRef: { name: "gone", key: "token" } } };
    let error: unknown;
    await agentLaunch(p, ENDPOINT, secrets).catch((err: unknown) => {
      error = err;
    });
    expect(error).to.be.instanceOf(PodConfigError);
    expect((await agentLaunch(pod(), ENDPOINT, secrets)).uuid).to.equal(undefined);
  });

  it("exits as buildkite-agent 3.138.1 does", () => {
    expect(agentExitCode({ kind: "ran", jobExit: 3 }, true)).to.equal(3);
    expect(agentExitCode({ kind: "ran", jobExit: 3 }, false)).to.equal(0);
    expect(agentExitCode({ kind: "ran", jobExit: -1 }, true)).to.equal(255);
    expect(agentExitCode({ kind: "acquire-rejected" }, true)).to.equal(27);
    expect(agentExitCode({ kind: "acquire-refused" }, true)).to.equal(0);
    expect(agentExitCode({ kind: "register-refused" }, true)).to.equal(1);
  });

  it("writes Running, then a terminal phase derived from every container's exit code", () => {
    const p = pod();
    const running = runningPatch(p, new Date(0)) as {
      metadata: { uid: string };
      status: { phase: string; containerStatuses: unknown[] };
    };
    expect(running.metadata.uid).to.equal("u1");
    expect(running.status.phase).to.equal("Running");
    expect(running.status.containerStatuses).to.have.length(2);
    const ended = (agentExit: number, jobExit?: number): unknown => {
      const patch = terminatedPatch(p, "agent", agentExit, jobExit, new Date(0), new Date(1)) as {
        status: { phase: string; containerStatuses: { state: { terminated: { exitCode: number } } }[] };
      };
      return [patch.status.phase, ...patch.status.containerStatuses.map((s) => s.state.terminated.exitCode)];
    };
    expect(ended(0, 0)).to.deep.equal(["Succeeded", 0, 0]);
    // agent-stack-k8s: the agent exits 0, the command container with the job's status.
    expect(ended(0, 2)).to.deep.equal(["Failed", 0, 2]);
    expect(ended(27)).to.deep.equal(["Failed", 27, 27]);
  });

  it("reads the role layout's agent container, not copy-agent, a sidecar, checkout or command", async () => {
    const p = rolePod({
      name: "roles",
      uuid: "j2",
      queue: "linux",
      endpoint: ENDPOINT,
      tokenSecret: "bk-agent-token",
      command: "make",
      sidecars: [{ image: "postgres:17" }],
    });
    expect(await agentLaunch(p, "http://default/v3", secrets)).to.deep.include({
      container: "agent",
      uuid: "j2",
      token: "bkct_x",
      endpoint: ENDPOINT,
      tags: ["queue=linux"],
      name: "roles",
      reflect: false,
    });
  });

  it("writes the role layout's statuses as the kubelet: init containers done, sidecars running, then each role's exit", () => {
    const p = rolePod({ name: "roles", uuid: "j2", queue: "q", endpoint: ENDPOINT, tokenSecret: "t" });
    p.spec?.initContainers?.push({ name: "sidecar-0", image: "redis", restartPolicy: "Always" });
    type Status = { state: { running?: object; terminated?: { exitCode: number } } };
    type Patch = { status: { phase: string; containerStatuses: Status[]; initContainerStatuses: Status[] } };
    const running = (runningPatch(p, new Date(0)) as Patch).status;
    expect(running.phase).to.equal("Running");
    expect(running.initContainerStatuses.map((s) => Object.keys(s.state))).to.deep.equal([["terminated"], ["running"]]);
    expect(running.containerStatuses.map((s) => Object.keys(s.state))).to.deep.equal([
      ["running"],
      ["running"],
      ["running"],
    ]);
    const ended = (agentExit: number, jobExit?: number): unknown[] => {
      const { status } = terminatedPatch(p, "agent", agentExit, jobExit, new Date(0), new Date(1)) as Patch;
      const codes = (list: Status[]): unknown[] => list.map((s) => s.state.terminated?.exitCode);
      return [status.phase, ...codes(status.initContainerStatuses), ...codes(status.containerStatuses)];
    };
    // copy-agent, sidecar-0, agent, checkout, command.
    expect(ended(0, 0)).to.deep.equal(["Succeeded", 0, 0, 0, 0, 0]);
    expect(ended(0, 2)).to.deep.equal(["Failed", 0, 0, 0, 0, 2]);
    // A refused acquire: the bootstraps never registered.
    expect(ended(27)).to.deep.equal(["Failed", 0, 0, 27, 1, 1]);
  });
});
