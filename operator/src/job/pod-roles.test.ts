import { expect } from "chai";
import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import { cpuMillis, memoryBytes } from "../api/quantity.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { buildPod } from "./pod-builder.js";
import { decideStep } from "./step-request.js";

const all = (pod: V1Pod): V1Container[] => [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])];
const named = (pod: V1Pod, name: string): V1Container => {
  const c = all(pod).find((x) => x.name === name);
  if (!c) throw new Error(`no ${name}`);
  return c;
};
const env = (c: V1Container): Record<string, unknown> =>
  Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value ?? e.valueFrom]));
const mounts = (c: V1Container): string[] => (c.volumeMounts ?? []).map((m) => m.name);

function podFor(queue: BuildkiteQueue, job: BuildkiteJob): V1Pod {
  const step = decideStep(queue, job);
  if ("refused" in step) throw new Error(step.refused);
  return buildPod(queue, job, 0, step.plan);
}
const withStep = (step: NonNullable<BuildkiteJob["spec"]["step"]>): BuildkiteJob => {
  const job = jobFixture();
  return { ...job, spec: { ...job.spec, step } };
};

describe("the job pod's roles (docs/pod-layout.md)", () => {
  it("copies the agent in, runs it alone, then checkout and the command, each talking to it over the workspace", () => {
    const pod = podFor(queueFixture(), jobFixture());
    expect(pod.spec?.initContainers?.map((c) => c.name)).to.deep.equal(["copy-agent"]);
    expect(pod.spec?.containers.map((c) => c.name)).to.deep.equal(["agent", "checkout", "command"]);
    expect(named(pod, "copy-agent").volumeMounts).to.deep.equal([
      { name: "buildkite-bin", mountPath: "/buildkite/bin" },
    ]);
    for (const [name, id, phases] of [
      ["checkout", "0", "plugin,checkout"],
      ["command", "1", "plugin,command"],
    ] as const) {
      const c = named(pod, name);
      expect(c.command).to.deep.equal(["/buildkite/bin/buildkite-agent", "kubernetes-bootstrap"]);
      expect(env(c)).to.include({
        BUILDKITE_CONTAINER_ID: id,
        BUILDKITE_BOOTSTRAP_PHASES: phases,
        BUILDKITE_JOB_CONTEXT_DIR: "/workspace",
      });
      expect(c.volumeMounts).to.deep.include({ name: "buildkite-bin", mountPath: "/buildkite/bin", readOnly: true });
      expect(env(c), `${name} has no token`).to.not.have.property("BUILDKITE_AGENT_TOKEN");
    }
    expect(named(pod, "checkout").volumeMounts, "the pod's user has a passwd entry").to.deep.include({
      name: "buildkite-bin",
      mountPath: "/etc/passwd",
      subPath: "passwd",
      readOnly: true,
    });
    expect(env(named(podFor(queueFixture(), withStep({ command: "make test" })), "command"))).to.include({
      BUILDKITE_COMMAND: "make test",
    });
    const tokenHolders = all(pod).filter((c) => c.env?.some((e) => e.valueFrom?.secretKeyRef));
    expect(tokenHolders.map((c) => c.name)).to.deep.equal(["agent"]);
  });

  it("runs the command in the step's image, else the queue's jobImage, else the agent image", () => {
    expect(named(podFor(queueFixture(), jobFixture()), "command").image).to.equal("buildkite/agent:3");
    expect(named(podFor(queueFixture({ jobImage: "debian:12" }), jobFixture()), "command").image).to.equal("debian:12");
    const pod = podFor(queueFixture({ jobImage: "debian:12" }), withStep({ image: "node:22" }));
    expect(named(pod, "command").image).to.equal("node:22");
    // The step's image is pulled and tried before the agent takes the job.
    expect(pod.spec?.initContainers?.map((c) => c.name)).to.deep.equal(["copy-agent", "image-check"]);
    expect(named(pod, "image-check")).to.deep.include({
      image: "node:22",
      command: ["/buildkite/bin/buildkite-agent", "--version"],
    });
    expect(named(pod, "agent").image).to.equal("buildkite/agent:3");
    expect(named(pod, "checkout").image).to.equal("buildkite/agent:3");
  });

  it("skips checkout when the queue or the step says so, and tells the agent how many containers to expect", () => {
    for (const pod of [
      podFor(queueFixture({ checkout: { skip: true } }), jobFixture()),
      podFor(queueFixture(), withStep({ kubernetes: { checkout: { skip: true } } })),
    ]) {
      expect(pod.spec?.containers.map((c) => c.name)).to.deep.equal(["agent", "command"]);
      expect(env(named(pod, "agent")).BUILDKITE_CONTAINER_COUNT).to.equal("1");
      expect(env(named(pod, "command")).BUILDKITE_CONTAINER_ID).to.equal("0");
    }
  });

  it("mounts git credentials into checkout only, checks host keys from the queue's known_hosts", () => {
    const queue = queueFixture({
      checkout: {
        skip: false,
        sshKeySecretRef: { name: "git-key", key: "ssh-privatekey" },
        knownHostsSecretRef: { name: "git-key", key: "known_hosts" },
        httpsCredentialsSecretRef: { name: "git-https", key: ".git-credentials" },
      },
    });
    const pod = podFor(queue, jobFixture());
    expect(mounts(named(pod, "checkout"))).to.include.members(["git-ssh", "git-known-hosts", "git-https"]);
    for (const name of ["agent", "command", "copy-agent"])
      expect(
        mounts(named(pod, name)).filter((m) => m.startsWith("git-")),
        name,
      ).to.deep.equal([]);
    expect(String(env(named(pod, "checkout")).GIT_SSH_COMMAND)).to.include("StrictHostKeyChecking=yes");
    expect(env(named(pod, "checkout"))).to.include({ GIT_CONFIG_KEY_0: "credential.helper" });
    expect(env(named(pod, "agent"))).to.include({ BUILDKITE_NO_SSH_KEYSCAN: "true" });
    expect(pod.spec?.volumes?.find((v) => v.name === "git-ssh")?.secret).to.deep.include({
      secretName: "git-key",
      items: [{ key: "ssh-privatekey", path: "id" }],
    });
  });

  it("puts the queue's env, envFrom, volumes and hooks where the job runs, and placement on the pod", () => {
    const queue = queueFixture({
      podTemplate: {
        env: [{ name: "NPM_TOKEN", valueFrom: { secretKeyRef: { name: "npm", key: "token" } } }],
        envFrom: [{ configMapRef: { name: "ci-settings" } }],
        volumes: [{ name: "npmrc", mountPath: "/etc/npmrc.d", secret: { secretName: "npmrc" } }],
        hooksConfigMap: "ci-hooks",
        nodeSelector: { pool: "ci" },
        affinity: { nodeAffinity: {} },
        imagePullPolicy: "IfNotPresent",
      },
    });
    const pod = podFor(queue, jobFixture());
    const command = named(pod, "command");
    expect(env(command).NPM_TOKEN).to.deep.equal({ secretKeyRef: { name: "npm", key: "token" } });
    expect(command.envFrom).to.deep.equal([{ configMapRef: { name: "ci-settings" } }]);
    expect(command.volumeMounts).to.deep.include({ name: "v-npmrc", mountPath: "/etc/npmrc.d", readOnly: true });
    expect(env(named(pod, "agent"))).to.include({ BUILDKITE_HOOKS_PATH: "/buildkite/hooks" });
    expect(mounts(named(pod, "checkout"))).to.include("hooks");
    expect(pod.spec?.nodeSelector).to.deep.equal({
      pool: "ci",
      "kubernetes.io/arch": "amd64",
      "kubernetes.io/os": "linux",
    });
    expect(pod.spec?.affinity).to.deep.equal({ nodeAffinity: {} });
    expect(all(pod).every((c) => c.imagePullPolicy === "IfNotPresent")).to.equal(true);
  });

  it("runs a step's services as native sidecars with the pod's security settings", () => {
    const pod = podFor(
      queueFixture(),
      withStep({
        kubernetes: { sidecars: [{ image: "postgres:16", env: [{ name: "POSTGRES_PASSWORD", value: "x" }] }] },
      }),
    );
    const sidecar = named(pod, "sidecar-0");
    expect(pod.spec?.initContainers?.map((c) => c.name)).to.deep.equal(["copy-agent", "sidecar-0"]);
    expect(sidecar).to.deep.include({ image: "postgres:16", restartPolicy: "Always" });
    expect(sidecar.securityContext?.runAsNonRoot).to.equal(true);
    expect(sidecar.volumeMounts ?? []).to.deep.equal([]);
  });

  it("splits the shape: the containers' requests add up to at most the shape, the command gets the rest", () => {
    const queue = queueFixture({ instanceShape: "LINUX_AMD64_2X4" });
    const pod = podFor(
      queue,
      withStep({
        kubernetes: { sidecars: [{ image: "redis:7", resources: { requests: { cpu: "500m", memory: "1Gi" } } }] },
      }),
    );
    const regular = [...(pod.spec?.containers ?? []), named(pod, "sidecar-0")];
    const cpu = regular.reduce((n, c) => n + (cpuMillis(c.resources?.requests?.cpu ?? 0) ?? 0), 0);
    const memory = regular.reduce((n, c) => n + (memoryBytes(c.resources?.requests?.memory ?? 0) ?? 0), 0);
    expect(cpu).to.equal(2000);
    expect(memory).to.equal(4 * 2 ** 30);
    expect(named(pod, "command").resources?.requests).to.deep.include({ cpu: "1300m", memory: "2816Mi" });
  });
});
