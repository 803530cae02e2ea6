import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { acquiredJob, agentContainer, expand, resolveEnv } from "./kubelet-env.js";
import { memoryKeys } from "./memory-keys.js";

const pod = (container: V1Container): V1Pod => ({
  metadata: { name: "p", namespace: "ns", uid: "u", labels: { team: "ci" } },
  spec: { nodeName: "n", containers: [container] },
});

describe("kubelet env", () => {
  const keys = memoryKeys({ creds: { TOKEN: "t0k", "bad key": "x" } }, { settings: { LEVEL: "debug", MODE: "fast" } });

  it("expands $(VAR) against what is defined so far; $$ escapes", () => {
    const vars = new Map([["A", "1"]]);
    expect(expand("$(A)-$(B)-$$(A)", vars)).to.equal("1-$(B)-$(A)");
  });

  it("reads envFrom sources in order with their prefix, then env over them, skipping invalid names", async () => {
    const container: V1Container = {
      name: "c",
      envFrom: [
        { configMapRef: { name: "settings" } },
        { secretRef: { name: "creds" }, prefix: "S_" },
        { configMapRef: { name: "absent", optional: true } },
      ],
      env: [
        { name: "MODE", value: "slow:$(LEVEL)" },
        { name: "FROM_CM", valueFrom: { configMapKeyRef: { name: "settings", key: "LEVEL" } } },
        { name: "OPTIONAL", valueFrom: { configMapKeyRef: { name: "settings", key: "nope", optional: true } } },
        { name: "TEAM", valueFrom: { fieldRef: { fieldPath: "metadata.labels['team']" } } },
      ],
    };
    expect(Object.fromEntries(await resolveEnv(keys, pod(container), container))).to.deep.equal({
      LEVEL: "debug",
      MODE: "slow:debug",
      S_TOKEN: "t0k",
      FROM_CM: "debug",
      TEAM: "ci",
    });
  });

  it("fails like CreateContainerConfigError for a missing object or key that is not optional", async () => {
    const failing: V1Container[] = [
      { name: "a", envFrom: [{ secretRef: { name: "gone" } }] },
      { name: "b", env: [{ name: "X", valueFrom: { configMapKeyRef: { name: "settings", key: "nope" } } }] },
      { name: "c", env: [{ name: "X", valueFrom: { secretKeyRef: { name: "gone", key: "k" } } }] },
    ];
    for (const container of failing) {
      let error: unknown;
      await resolveEnv(keys, pod(container), container).catch((err: unknown) => {
        error = err;
      });
      expect(error, container.name).to.be.instanceOf(Error);
      expect((error as Error).message).to.match(/not found/);
    }
  });

  it("finds the agent container and its job: --acquire-job, or BUILDKITE_AGENT_ACQUIRE_JOB of the role layout", () => {
    const old = pod({ name: "agent", args: ["start", "--acquire-job", "j1"] });
    expect(acquiredJob(agentContainer(old) ?? { name: "" })).to.equal("j1");
    const roles: V1Pod = {
      spec: {
        containers: [
          { name: "checkout", env: [{ name: "BUILDKITE_CONTAINER_ID", value: "0" }] },
          { name: "runner", env: [{ name: "BUILDKITE_AGENT_ACQUIRE_JOB", value: "j2" }] },
        ],
      },
    };
    expect(agentContainer(roles)?.name).to.equal("runner");
    expect(acquiredJob({ name: "x", args: ["--acquire-job=j3"] })).to.equal("j3");
  });
});
