import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { prepareLaunch } from "./container-launch.js";
import { UNSHARE } from "./container-process.js";
import { memoryKeys } from "./memory-keys.js";
import { PodExecution, type ContainerRun } from "./pod-execution.js";

const isolated = spawnSync("unshare", [...UNSHARE, "true"]).status === 0;
const sh = (name: string, script: string, extra: Partial<V1Container> = {}): V1Container => ({
  name,
  image: "busybox",
  command: ["sh", "-c", script],
  volumeMounts: [{ name: "data", mountPath: "/data" }],
  ...extra,
});

/** Local processes only: the order and the ends the kubelet gives a pod's containers, without a cluster. */
describe("pod execution", function () {
  this.timeout(20_000);
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "bkpe-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function execute(
    initContainers: V1Container[],
    containers: V1Container[],
    during?: (run: PodExecution) => void,
  ): Promise<{ run: PodExecution; changes: number }> {
    const pod: V1Pod = {
      metadata: { name: "p", uid: "u" },
      spec: { initContainers, containers, volumes: [{ name: "data", emptyDir: {} }] },
    };
    const run = new PodExecution(pod, isolated);
    const ctx = {
      podDir: dir,
      volumes: new Map([["data", dir]]),
      keys: memoryKeys({}),
      agentBinary: "/nonexistent/buildkite-agent",
      binDir: join(dir, "bin"),
    };
    for (const c of run.containers()) run.setLaunch(await prepareLaunch(ctx, pod, c));
    let changes = 0;
    const done = run.run(() => {
      changes++;
    }, 500);
    during?.(run);
    await done;
    return { run, changes };
  }
  const byName = (run: PodExecution): Record<string, ContainerRun | undefined> =>
    Object.fromEntries(run.view().containers.map((c) => [c.name, c]));

  it("runs init containers in order, leaves a sidecar running, then every container at once; stops the sidecar last", async () => {
    const { run, changes } = await execute(
      [
        sh("first", "echo one > /data/order"),
        sh("sidecar", "trap 'exit 0' TERM; echo up >> /data/order; while true; do sleep 0.1; done", {
          restartPolicy: "Always",
        }),
        sh("second", "sleep 0.2; echo two >> /data/order"),
      ],
      [sh("a", "cat /data/order"), sh("b", "sleep 0.3; exit 2")],
    );
    const c = byName(run);
    expect(c.a?.output.split("\n")).to.deep.equal(["one", "up", "two"]);
    expect(c.b?.exitCode).to.equal(2);
    expect(c.sidecar?.exitCode, c.sidecar?.output).to.be.oneOf([0, 137]);
    const view = run.view();
    expect(view.phase).to.equal("Failed");
    expect(view.containers.map((x) => x.kind)).to.deep.equal(["init", "sidecar", "init", "container", "container"]);
    const at = (name: string, field: "startedAt" | "finishedAt"): number =>
      view.containers.find((x) => x.name === name)?.[field]?.getTime() ?? NaN;
    expect(at("second", "startedAt")).to.be.at.least(at("first", "finishedAt"));
    expect(at("a", "startedAt")).to.be.at.least(at("second", "finishedAt"));
    expect(at("sidecar", "finishedAt")).to.be.at.least(at("b", "finishedAt"));
    expect(run.facts()).to.include({ ended: true });
    expect(changes).to.be.at.least(5);
  });

  it("fails the pod at a failing init container: nothing after it starts", async () => {
    const { run } = await execute([sh("init", "exit 5"), sh("never-init", "true")], [sh("main", "true")]);
    const c = byName(run);
    expect(c.init?.exitCode).to.equal(5);
    expect(c["never-init"]?.exitCode).to.equal(undefined);
    expect(c.main?.exitCode).to.equal(undefined);
    expect(run.view().phase).to.equal("Failed");
  });

  it("reports a sidecar whose command is not here as running, with a note, and the pod goes on", async () => {
    const { run } = await execute(
      [{ name: "db", image: "postgres:17", restartPolicy: "Always" }],
      [sh("main", "true")],
    );
    const c = byName(run);
    expect(c.db).to.include({ exitCode: 0 });
    expect(c.db?.note).to.include("sidecar db (postgres:17) was not run");
    expect(run.facts().message).to.include("was not run");
    expect(run.view().phase).to.equal("Succeeded");
  });

  it("stops on terminate: SIGTERM, SIGKILL after the grace period, and nothing more starts", async () => {
    const { run } = await execute(
      [sh("sidecar", "exec sleep 300", { restartPolicy: "Always" })],
      [sh("ignores-term", "trap '' TERM; sleep 300 & wait; sleep 300"), sh("quick", "sleep 300")],
      (r) => {
        setTimeout(() => {
          r.terminate(300);
        }, 300);
      },
    );
    const c = byName(run);
    expect(c["ignores-term"]?.exitCode).to.equal(137);
    expect(c.quick?.exitCode).to.be.oneOf([143, 137]);
    expect(c.sidecar?.exitCode).to.be.oneOf([143, 137]);
    expect(run.running).to.equal(false);
  });
});
