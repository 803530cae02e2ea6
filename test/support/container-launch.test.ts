import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ContainerConfigError, PathMap, prepareLaunch, type LaunchContext } from "./container-launch.js";
import { buildPod } from "../../operator/src/job/pod-builder.js";
import { jobFixture, queueFixture } from "./fixtures.js";
import { memoryKeys } from "./memory-keys.js";
import { rolePod } from "./role-pod.js";

const AGENT = "/opt/local/buildkite-agent";

describe("container launch", () => {
  let dir: string;
  let ctx: LaunchContext;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "bkcl-"));
    const volumes = new Map([
      ["workspace", join(dir, "v/workspace")],
      ["buildkite-bin", join(dir, "v/buildkite-bin")],
    ]);
    ctx = {
      podDir: dir,
      volumes,
      keys: memoryKeys({ t: { token: "x" } }),
      agentBinary: AGENT,
      binDir: join(dir, "bin"),
    };
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("moves paths under a mount wherever they stand in a value, and outside-volume agent binaries to ours", () => {
    const paths = new PathMap(
      [
        ["/workspace", "/h/ws"],
        ["/workspace/cache", "/h/cache"],
        ["/buildkite/bin", "/h/bin"],
      ],
      AGENT,
    );
    expect(paths.text("/workspace/build")).to.equal("/h/ws/build");
    expect(paths.text("/workspace/cache/x")).to.equal("/h/cache/x");
    expect(paths.text("/buildkite/bin:/usr/bin")).to.equal("/h/bin:/usr/bin");
    expect(paths.text("--build-path=/workspace/b")).to.equal("--build-path=/h/ws/b");
    expect(paths.text('cp "/usr/local/bin/buildkite-agent" /buildkite/bin/')).to.equal(`cp "${AGENT}" /h/bin/`);
    // The copy's destination is in a volume: moved there, never replaced by our binary.
    expect(paths.arg("/buildkite/bin/buildkite-agent")).to.equal("/h/bin/buildkite-agent");
    expect(paths.arg("buildkite-agent")).to.equal(AGENT);
    expect(paths.text("{ grep x; } >/buildkite/bin/passwd|cat</workspace/in")).to.equal(
      "{ grep x; } >/h/bin/passwd|cat</h/ws/in",
    );
    for (const kept of ["/workspaces", "http://host/workspace", "queue=default", "arn:aws:iam::1:role/x"])
      expect(paths.text(kept)).to.equal(kept);
  });

  it("launches the role layout's containers: copy-agent copies into the volume, checkout runs the copy", async () => {
    const pod = rolePod({ name: "p", uuid: "j", queue: "q", endpoint: "http://127.0.0.1:1/v3", tokenSecret: "t" });
    const launch = async (name: string): Promise<Awaited<ReturnType<typeof prepareLaunch>>> => {
      const container = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find(
        (c) => c.name === name,
      );
      return prepareLaunch(ctx, pod, container ?? { name });
    };
    const copy = await launch("copy-agent");
    expect([copy.binary, ...copy.args]).to.deep.equal(["cp", AGENT, join(dir, "v/buildkite-bin/buildkite-agent")]);
    const checkout = await launch("checkout");
    expect(checkout.binary).to.equal(join(dir, "v/buildkite-bin/buildkite-agent"));
    expect(checkout.env).to.include({
      HOME: join(dir, "v/workspace"),
      BUILDKITE_JOB_CONTEXT_DIR: join(dir, "v/workspace"),
      BUILDKITE_SOCKETS_PATH: join(dir, "v/workspace/sockets/checkout"),
    });
    expect(checkout.env.PATH?.split(":")[0]).to.equal(ctx.binDir);
    const agent = await launch("agent");
    expect(agent.env).to.include({ BUILDKITE_AGENT_TOKEN: "x", BUILDKITE_BUILD_PATH: join(dir, "v/workspace/build") });
    expect(agent.env).to.not.have.property("BUILDKITE_SKIP_CHECKOUT");
  });

  it("launches the operator's copy-agent script: the copy and the passwd go to the volume, the image's passwd is read", async () => {
    const pod = buildPod(queueFixture(), jobFixture());
    const copyAgent = pod.spec?.initContainers?.find((c) => c.name === "copy-agent") ?? { name: "" };
    const [, script = ""] = (await prepareLaunch(ctx, pod, copyAgent)).args;
    const bin = join(dir, "v/buildkite-bin");
    expect(script).to.include(`cp "$(command -v buildkite-agent)" ${bin}/buildkite-agent`);
    // /etc/passwd is a mount of checkout only: copy-agent reads the image's own.
    expect(script).to.include(" /etc/passwd 2>/dev/null").and.include(`>${bin}/passwd`);
  });

  it("gives the agent's Kubernetes mode its /workspace default in the volume, and refuses socket paths over 107 bytes", async () => {
    const agent: V1Container = {
      name: "agent",
      command: ["buildkite-agent", "start"],
      env: [{ name: "BUILDKITE_KUBERNETES_EXEC", value: "true" }],
      volumeMounts: [{ name: "workspace", mountPath: "/workspace" }],
    };
    const pod: V1Pod = { metadata: { name: "p" }, spec: { containers: [agent] } };
    expect((await prepareLaunch(ctx, pod, agent)).env.BUILDKITE_JOB_CONTEXT_DIR).to.equal(join(dir, "v/workspace"));
    const deep = { ...ctx, volumes: new Map([["workspace", join(dir, "x".repeat(100))]]) };
    let error: unknown;
    await prepareLaunch(deep, pod, agent).catch((err: unknown) => {
      error = err;
    });
    expect(error).to.be.instanceOf(ContainerConfigError).with.property("container", "agent");
    expect((error as Error).message).to.include("longer than 107 bytes");
  });

  it("fails a container whose env cannot be resolved with CreateContainerConfigError, naming it", async () => {
    const c: V1Container = {
      name: "command",
      env: [{ name: "X", valueFrom: { secretKeyRef: { name: "gone", key: "k" } } }],
    };
    let error: unknown;
    await prepareLaunch(ctx, { spec: { containers: [c] } }, c).catch((err: unknown) => {
      error = err;
    });
    expect(error).to.be.instanceOf(ContainerConfigError).with.property("container", "command");
  });
});
