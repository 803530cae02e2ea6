import type { KubeConfig, V1ContainerStatus, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expandPlugins, KUBERNETES_PLUGIN } from "../fake-buildkite/plugins.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import { processesRunning } from "../support/managed-process.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { TestObjects } from "../support/objects.js";
import { PodRunner, RUNNER_ANNOTATION, type PodRun } from "../support/pod-runner.js";
import { rolePod, type RolePodOptions } from "../support/role-pod.js";

const QUEUE = "roles-q";
const TOKEN_SECRET = "bk-agent-token";

/**
 * The job pod of docs/pod-layout.md, built by hand from the document, run by the pod runner with the real
 * buildkite-agent in its Kubernetes mode: copy-agent copies the agent into the buildkite-bin volume, `agent` acquires
 * the job and serves the socket in the workspace, `checkout` and `command` run their bootstrap phases in order.
 */
describe("PodRunner: the pod of one role per container, run by the real buildkite-agent (fake Buildkite)", function () {
  this.timeout(120_000);
  let kc: KubeConfig;
  let t: TestObjects;
  let fake: FakeBuildkite | undefined;
  let runner: PodRunner | undefined;
  let repoDir: string | undefined;
  let seq = 0;

  before(async () => {
    kc = testCluster().kubeConfig();
    t = new TestObjects(kc, await testNamespace(kc, "roles"));
    fake = await FakeBuildkite.start();
    await t.createTokenSecret(TOKEN_SECRET, fake.agentToken);
    runner = await PodRunner.start({ kubeConfig: kc, namespace: t.namespace });
  });
  after(async () => {
    await runner?.stop();
    await fake?.stop();
    if (repoDir !== undefined) await rm(repoDir, { recursive: true, force: true });
    if (t.namespace) await t.core.deleteNamespace({ name: t.namespace });
  });

  const fakeBuildkite = (): FakeBuildkite => {
    if (!fake) throw new Error("the fake Buildkite did not start");
    return fake;
  };
  const podRunner = (): PodRunner => {
    if (!runner) throw new Error("the pod runner did not start");
    return runner;
  };

  /** Creates the pod for job `uuid` and waits for the runner to finish it and for its final phase. */
  async function runPod(uuid: string, options: Partial<RolePodOptions>): Promise<{ run: PodRun; pod: V1Pod }> {
    const name = `roles-${String(++seq)}`;
    const body = rolePod({
      name,
      uuid,
      queue: QUEUE,
      endpoint: fakeBuildkite().agentEndpoint,
      tokenSecret: TOKEN_SECRET,
      annotations: { [RUNNER_ANNOTATION]: "real" },
      ...options,
    });
    await t.core.createNamespacedPod({ namespace: t.namespace, body });
    const run = await podRunner().waitForRun(name, 90_000);
    const pod = await eventually(
      async () => {
        const p = await t.pod(name);
        expect(p?.status?.phase, "a terminal phase").to.be.oneOf(["Succeeded", "Failed"]);
        return p as V1Pod;
      },
      { what: `pod ${name} to end` },
    );
    return { run, pod };
  }

  const terminated = (statuses: V1ContainerStatus[] | undefined): Record<string, unknown> =>
    Object.fromEntries((statuses ?? []).map((s) => [s.name, s.state?.terminated?.exitCode]));

  it("runs the job's command in `command` after `checkout`, with a sidecar, a hooks ConfigMap and envFrom", async () => {
    await t.core.createNamespacedConfigMap({
      namespace: t.namespace,
      body: {
        metadata: { name: "hooks" },
        data: { environment: "#!/bin/sh\necho hook-from-configmap in container $BUILDKITE_CONTAINER_ID\n" },
      },
    });
    // (Not named *SECRET*: the agent would redact its value from the log.)
    await t.core.createNamespacedSecret({
      namespace: t.namespace,
      body: { metadata: { name: "step-env" }, stringData: { FROM_ENVFROM: "envfrom-value" } },
    });
    await t.core.createNamespacedConfigMap({
      namespace: t.namespace,
      body: { metadata: { name: "step-config" }, data: { level: "config-value" } },
    });
    const command =
      'echo "job in container $BUILDKITE_CONTAINER_ID: $FROM_ENVFROM $FROM_CONFIG" && test -x /buildkite/bin/buildkite-agent';
    // The kubernetes plugin as Buildkite expands it: the agent's Kubernetes mode drops it before running plugins.
    const plugins = expandPlugins([{ kubernetes: { sidecars: [{ image: "busybox", command: ["sleep", "3600"] }] } }]);
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command, plugins, image: "alpine:3.22" });
    expect(JSON.parse(fakeBuildkite().job(uuid).env.BUILDKITE_PLUGINS ?? "")).to.deep.equal([
      { [KUBERNETES_PLUGIN]: { sidecars: [{ image: "busybox", command: ["sleep", "3600"] }] } },
    ]);

    const { run, pod } = await runPod(uuid, {
      command,
      hooksConfigMap: "hooks",
      sidecars: [
        { image: "busybox", command: ["sleep", "3600"] },
        // postgres is not on this machine: reported running, with a note, so the pod goes on.
        { name: "db", image: "postgres:17" },
      ],
      commandEnvFrom: [{ secretRef: { name: "step-env" } }],
      commandEnv: [{ name: "FROM_CONFIG", valueFrom: { configMapKeyRef: { name: "step-config", key: "level" } } }],
    });

    const job = fakeBuildkite().job(uuid);
    expect(job, run.output).to.include({ state: "finished", exit_status: 0 });
    expect(job.log).to.include("Bootstrapping phases plugin,checkout");
    expect(job.log).to.include("Bootstrapping phases plugin,command");
    expect(job.log, job.log).to.include("job in container 1: envfrom-value config-value");
    expect(job.log).to.include("hook-from-configmap in container 1");
    expect(job.log.indexOf("plugin,checkout")).to.be.below(job.log.indexOf("plugin,command"));

    expect(pod.status?.phase).to.equal("Succeeded");
    expect(terminated(pod.status?.containerStatuses)).to.deep.equal({ agent: 0, checkout: 0, command: 0 });
    const inits = pod.status?.initContainerStatuses ?? [];
    expect(inits.map((s) => s.name)).to.deep.equal(["copy-agent", "sidecar-0", "db"]);
    expect(inits[0]?.state?.terminated).to.include({ exitCode: 0, reason: "Completed" });
    // The sidecars were stopped once the regular containers had exited. sleep, PID 1 of its PID namespace as in a
    // container, ignores SIGTERM and ends with the SIGKILL after the grace period (137); without a namespace, 143.
    expect(terminated(inits)).to.deep.include({ db: 0 });
    expect(inits[1]?.state?.terminated?.exitCode).to.be.oneOf([137, 143]);
    expect(pod.status?.message).to.include("sidecar db (postgres:17) was not run");

    expect(run).to.include({ uuid, exitCode: 0, phase: "Succeeded" });
    expect(run.containers.map((c) => [c.name, c.kind])).to.deep.equal([
      ["copy-agent", "init"],
      ["sidecar-0", "sidecar"],
      ["db", "sidecar"],
      ["agent", "container"],
      ["checkout", "container"],
      ["command", "container"],
    ]);
    const started = (name: string): number => run.containers.find((c) => c.name === name)?.startedAt?.getTime() ?? 0;
    const copied = run.containers.find((c) => c.name === "copy-agent")?.finishedAt?.getTime() ?? Infinity;
    expect(started("agent"), "regular containers start after copy-agent exits").to.be.at.least(copied);
    expect(run.containers.find((c) => c.name === "db")?.note).to.include("postgres");
  });

  it("fails the pod when the job fails: the exit status reaches Buildkite and `command` exits with it", async () => {
    const command = "echo failing-on-purpose && exit 3";
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command });
    const { run, pod } = await runPod(uuid, { command, checkout: false });

    const job = fakeBuildkite().job(uuid);
    expect(job, run.output).to.include({ state: "finished", exit_status: 3 });
    expect(job.log).to.include("failing-on-purpose");
    expect(pod.status?.phase).to.equal("Failed");
    const statuses = terminated(pod.status?.containerStatuses);
    expect(statuses).to.include({ command: 3 });
    expect(Object.keys(statuses)).to.deep.equal(["agent", "command"]);
    expect(run.phase).to.equal("Failed");
    // The documented agent env has no reflect-exit-status (the operator's pod adds --reflect-exit-status): without it
    // the agent exits 0 however the job ended, and only `command` carries the job's status.
    expect(run.exitCode, "the agent container's exit code").to.equal(0);
    expect(statuses.agent).to.equal(0);
  });

  it("with BUILDKITE_AGENT_REFLECT_EXIT_STATUS=true on `agent`, the agent container exits with the job's status", async () => {
    const command = "exit 4";
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command });
    const agentEnv = [{ name: "BUILDKITE_AGENT_REFLECT_EXIT_STATUS", value: "true" }];
    const { run, pod } = await runPod(uuid, { command, checkout: false, agentEnv });
    expect(fakeBuildkite().job(uuid), run.output).to.include({ state: "finished", exit_status: 4 });
    expect(terminated(pod.status?.containerStatuses)).to.deep.equal({ agent: 4, command: 4 });
    expect(run.exitCode).to.equal(4);
  });

  it("stops every container of a pod deleted while it runs: the agent cancels the job, its command is gone", async () => {
    const command = "echo sleeping && sleep 289";
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command });
    const name = `roles-${String(++seq)}`;
    await t.core.createNamespacedPod({
      namespace: t.namespace,
      body: rolePod({
        name,
        uuid,
        queue: QUEUE,
        endpoint: fakeBuildkite().agentEndpoint,
        tokenSecret: TOKEN_SECRET,
        annotations: { [RUNNER_ANNOTATION]: "real" },
        command,
        sidecars: [{ image: "busybox", command: ["sleep", "3600"] }],
      }),
    });
    await eventually(
      () => {
        expect(fakeBuildkite().job(uuid).log).to.include("sleeping");
      },
      { what: "the job's command to start" },
    );
    const running = await t.pod(name);
    expect(running?.status?.phase).to.equal("Running");
    expect(running?.status?.conditions?.find((c) => c.type === "Initialized")?.status).to.equal("True");
    expect(processesRunning("sleep 289")).to.have.lengthOf(1);

    await t.core.deleteNamespacedPod({ name, namespace: t.namespace });
    const run = await podRunner().waitForRun(name, 30_000);
    expect(run.containers.filter((c) => c.exitCode === undefined)).to.deep.equal([]);
    // The agent's Kubernetes mode takes SIGTERM as an ungraceful stop: it cancels the job and reports it at once.
    expect(fakeBuildkite().job(uuid), run.output).to.include({
      state: "finished",
      exit_status: -1,
      signal_reason: "agent_stop",
    });
    expect(run.exitCode).to.equal(0);
    await eventually(
      () => {
        expect(processesRunning("sleep 289")).to.deep.equal([]);
        expect(processesRunning("sleep 3600")).to.deep.equal([]);
      },
      { what: "the job's command and the sidecar to be gone" },
    );
  });

  it("checks out a real repository (a local file:// one) in `checkout`, for `command` to use", async () => {
    repoDir = await mkdtemp(join(tmpdir(), "bkrepo-"));
    const git = (...args: string[]): string =>
      execFileSync("git", ["-C", repoDir ?? "", "-c", "user.name=t", "-c", "user.email=t@t", ...args], {
        encoding: "utf8",
      });
    git("init", "-q", "-b", "main");
    await writeFile(join(repoDir, "marker.txt"), "checked-out-for-real\n");
    git("add", "marker.txt");
    git("commit", "-q", "-m", "marker");
    const command = "cat marker.txt";
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command, repo: `file://${repoDir}` });
    expect(fakeBuildkite().job(uuid).env).to.not.have.property("BUILDKITE_SKIP_CHECKOUT");

    const { run, pod } = await runPod(uuid, { command });
    const job = fakeBuildkite().job(uuid);
    expect(job, run.output).to.include({ state: "finished", exit_status: 0 });
    expect(job.log).to.include("git clone");
    expect(job.log).to.include("checked-out-for-real");
    expect(pod.status?.phase).to.equal("Succeeded");
  });

  it("cannot run the step without BUILDKITE_COMMAND on `command`: kubernetes-bootstrap never takes the agent's", async () => {
    // agent 3.138.1 keeps BUILDKITE_COMMAND from the container's own env (existingEnvPriority), so the pod must set it
    // (the operator's pod does; docs/pod-layout.md does not say so yet).
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command: "echo never-runs" });
    const { pod } = await runPod(uuid, { checkout: false });
    const job = fakeBuildkite().job(uuid);
    expect(job).to.include({ state: "finished", exit_status: 1 });
    expect(job.log).to.include("the command phase has no `command` to execute");
    expect(job.log).to.not.include("never-runs");
    expect(pod.status?.phase).to.equal("Failed");
  });
});
