import type { KubeConfig, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobResourceName } from "../../operator/src/api/names.js";
import type { BuildkiteJob } from "../../operator/src/api/generated/buildkite-job.js";
import type { BuildkiteQueueSpec } from "../../operator/src/api/generated/buildkite-queue.js";
import { buildPod } from "../../operator/src/job/pod-builder.js";
import { decideStep } from "../../operator/src/job/step-request.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import { installCrds } from "../support/crds.js";
import { processesRunning } from "../support/managed-process.js";
import { eventually } from "../support/eventually.js";
import { queueFixture } from "../support/fixtures.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { TestObjects } from "../support/objects.js";
import { PodRunner, RUNNER_ANNOTATION } from "../support/pod-runner.js";

const QUEUE = "runner-q";
const REAL = { [RUNNER_ANNOTATION]: "real" };

/**
 * The pod runner plays kubelet for pods annotated `kwok.test/runner: real`: the pods the operator builds run the real
 * buildkite-agent against the fake Buildkite, with the env a kubelet would give them, and end with its exit code.
 */
describe("PodRunner: job pods run by the real buildkite-agent (real control plane, fake Buildkite)", function () {
  this.timeout(120_000);
  let kc: KubeConfig;
  let t: TestObjects;
  let fake: FakeBuildkite | undefined;
  let runner: PodRunner | undefined;

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    t = new TestObjects(kc, await testNamespace(kc, "runner"));
    fake = await FakeBuildkite.start();
    await t.core.createNamespacedSecret({
      namespace: t.namespace,
      body: {
        metadata: { name: "bk-agent-token", labels: { "buildkite.com/agent-token": "true" } },
        stringData: { token: fake.agentToken },
      },
    });
    // The queue controller would make the queue's ServiceAccount; no operator runs here.
    await t.core.createNamespacedServiceAccount({
      namespace: t.namespace,
      body: { metadata: { name: `bkq-${QUEUE}` } },
    });
    runner = await PodRunner.start({ kubeConfig: kc, namespace: t.namespace });
  });
  after(async () => {
    await runner?.stop();
    await fake?.stop();
    if (t.namespace) await t.core.deleteNamespace({ name: t.namespace });
  });

  /**
   * Creates the BuildkiteJob (its pod's controller owner: without it the garbage collector deletes the pod), with the
   * step's command as the operator records it from get-job, and the pod buildPod makes for it.
   */
  async function createJobPod(uuid: string, spec: Partial<BuildkiteQueueSpec>): Promise<string> {
    const command = fakeBuildkite()
      .jobs()
      .find((j) => j.id === uuid)?.command;
    const queue = queueFixture(
      { queue: QUEUE, endpoint: fakeBuildkite().agentEndpoint, instanceShape: "LINUX_AMD64_2X4", ...spec },
      QUEUE,
      t.namespace,
    );
    const job = (await t.custom.createNamespacedCustomObject({
      group: "buildkite.com",
      version: "v1alpha1",
      namespace: t.namespace,
      plural: "buildkitejobs",
      body: {
        apiVersion: "buildkite.com/v1alpha1",
        kind: "BuildkiteJob",
        metadata: { name: jobResourceName(uuid) },
        spec: { queueRef: { name: QUEUE }, uuid, priority: 0, ...(command === undefined ? {} : { step: { command } }) },
      },
    })) as BuildkiteJob;
    // As the operator: the queue decides what the step may have, and the pod runs that.
    const decision = decideStep(queue, job);
    if ("refused" in decision) throw new Error(decision.refused);
    const pod = await t.core.createNamespacedPod({
      namespace: t.namespace,
      body: buildPod(queue, job, 0, decision.plan),
    });
    return pod.metadata?.name ?? "";
  }

  const fakeBuildkite = (): FakeBuildkite => {
    if (!fake) throw new Error("the fake Buildkite did not start");
    return fake;
  };
  const podRunner = (): PodRunner => {
    if (!runner) throw new Error("the pod runner did not start");
    return runner;
  };
  const podWhen = (name: string, what: string, check: (pod: V1Pod) => void): Promise<V1Pod> =>
    eventually(
      async () => {
        const pod = await t.pod(name);
        if (!pod) throw new Error(`pod ${name} does not exist`);
        check(pod);
        return pod;
      },
      { what: `${what} (pod ${name})` },
    );

  it("runs a failing job: the agent, named after its pod, reports exit 3 to Buildkite and the pod fails with exit code 3", async () => {
    // The pod's agent runs with --reflect-exit-status (pod-builder), so the container's exit code is the job's.
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command: 'echo runner-marker-3 in "$(pwd)" && exit 3' });
    const name = await createJobPod(uuid, { podTemplate: { annotations: REAL } });

    const run = await podRunner().waitForRun(name, 60_000);
    expect(run, run.output).to.include({ uuid, exitCode: 3, reason: "Error" });
    const pod = await podWhen(name, "Failed", (p) => {
      expect(p.status?.phase).to.equal("Failed");
    });
    expect(pod.status?.containerStatuses?.[0]?.state?.terminated).to.include({ exitCode: 3, reason: "Error" });
    expect(pod.status?.startTime, "startTime written when the agent started").to.be.instanceOf(Date);
    expect(pod.status?.conditions?.find((c) => c.type === "PodScheduled")?.status).to.equal("True");
    expect(pod.status?.podIP).to.equal("127.0.0.1");

    const job = fakeBuildkite().job(uuid);
    expect(job).to.include({ state: "finished", exit_status: 3 });
    expect(job.log).to.include("runner-marker-3");
    // BUILDKITE_BUILD_PATH (/workspace/builds) was moved into the runner's directory for the pod.
    expect(job.log).to.include(`in ${podRunner().workDir}/`);
    // BUILDKITE_AGENT_NAME comes from the fieldRef metadata.name; the token from the Secret (else no registration).
    const agent = fakeBuildkite()
      .agents()
      .find((a) => a.id === job.agent_id);
    expect(agent?.name).to.equal(name);
    expect(agent?.tags).to.include(`queue=${QUEUE}`);
  });

  it("runs a passing job with AWS settings: the projected token file exists, the pod succeeds", async () => {
    const uuid = fakeBuildkite().seedJob({
      queue_key: QUEUE,
      command: 'test -s "$AWS_WEB_IDENTITY_TOKEN_FILE" && echo token file for "$AWS_ROLE_ARN"',
    });
    const aws = {
      roleArn: "arn:aws:iam::123456789012:role/runner",
      region: "eu-west-1",
      audience: "sts.amazonaws.com",
      tokenExpirationSeconds: 3600,
    };
    const name = await createJobPod(uuid, { aws, podTemplate: { annotations: REAL } });

    const run = await podRunner().waitForRun(name, 60_000);
    expect(run, run.output).to.include({ uuid, exitCode: 0, reason: "Completed" });
    const pod = await podWhen(name, "Succeeded", (p) => {
      expect(p.status?.phase).to.equal("Succeeded");
    });
    expect(pod.status?.containerStatuses?.[0]?.state?.terminated).to.include({ exitCode: 0, reason: "Completed" });
    const job = fakeBuildkite().job(uuid);
    expect(job).to.include({ state: "finished", exit_status: 0 });
    expect(job.log).to.include(`token file for ${aws.roleArn}`);
  });

  it("waits with CreateContainerConfigError while the token Secret is missing, then runs the pod once it exists", async () => {
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command: "echo late-token" });
    const name = await createJobPod(uuid, {
      agentTokenSecretRef: { name: "late-token", key: "token" },
      podTemplate: { annotations: REAL },
    });
    const waiting = await podWhen(name, "CreateContainerConfigError", (p) => {
      expect(p.status?.containerStatuses?.[0]?.state?.waiting?.reason).to.equal("CreateContainerConfigError");
    });
    expect(waiting.status?.containerStatuses?.[0]?.state?.waiting?.message).to.include("late-token");
    await t.core.createNamespacedSecret({
      namespace: t.namespace,
      body: {
        metadata: { name: "late-token", labels: { "buildkite.com/agent-token": "true" } },
        stringData: { token: fakeBuildkite().agentToken },
      },
    });
    const run = await podRunner().waitForRun(name, 60_000);
    expect(run, run.output).to.include({ uuid, exitCode: 0 });
    await podWhen(name, "Succeeded", (p) => {
      expect(p.status?.phase).to.equal("Succeeded");
    });
  });

  it("still runs a pod of the earlier layout: one container running `buildkite-agent start --acquire-job` and the job", async () => {
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command: 'echo one-container in "$HOME" && exit 2' });
    const name = "one-container";
    await t.core.createNamespacedPod({
      namespace: t.namespace,
      body: {
        metadata: { name, annotations: REAL },
        spec: {
          restartPolicy: "Never",
          containers: [
            {
              name: "agent",
              image: "buildkite/agent:3",
              command: ["buildkite-agent"],
              args: ["start", "--acquire-job", uuid, "--reflect-exit-status"],
              env: [
                {
                  name: "BUILDKITE_AGENT_TOKEN",
                  valueFrom: { secretKeyRef: { name: "bk-agent-token", key: "token" } },
                },
                { name: "BUILDKITE_AGENT_ENDPOINT", value: fakeBuildkite().agentEndpoint },
                { name: "BUILDKITE_AGENT_TAGS", value: `queue=${QUEUE}` },
                { name: "BUILDKITE_BUILD_PATH", value: "/workspace/builds" },
                { name: "HOME", value: "/workspace" },
              ],
              volumeMounts: [{ name: "workspace", mountPath: "/workspace" }],
              workingDir: "/workspace",
            },
          ],
          volumes: [{ name: "workspace", emptyDir: {} }],
        },
      },
    });
    const run = await podRunner().waitForRun(name, 60_000);
    expect(run, run.output).to.include({ uuid, exitCode: 2, phase: "Failed" });
    expect(run.containers.map((c) => c.name)).to.deep.equal(["agent"]);
    expect(fakeBuildkite().job(uuid)).to.include({ state: "finished", exit_status: 2 });
    expect(fakeBuildkite().job(uuid).log).to.include(`one-container in ${podRunner().workDir}/`);
    const pod = await podWhen(name, "Failed", (p) => {
      expect(p.status?.phase).to.equal("Failed");
    });
    expect(pod.status?.containerStatuses?.map((c) => c.state?.terminated?.exitCode)).to.deep.equal([2]);
    expect(pod.status).to.not.have.property("initContainerStatuses");
  });

  it("leaves a pod without the annotation to KWOK, which runs and ends it as before", async () => {
    const uuid = "0190a8f4-52c1-4b8e-9d4a-00000000c0de";
    const name = await createJobPod(uuid, {});
    await podWhen(name, "Running by KWOK", (p) => {
      expect(p.status?.phase).to.equal("Running");
    });
    await t.exitPod(name, 0);
    await podWhen(name, "Succeeded by KWOK", (p) => {
      expect(p.status?.phase).to.equal("Succeeded");
    });
    expect(
      podRunner()
        .runs()
        .map((r) => r.name),
    ).to.not.include(name);
  });

  it("fails a pod that outlives activeDeadlineSeconds with DeadlineExceeded; its agent and the job's command are killed", async () => {
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command: "echo sleeping && sleep 287" });
    const name = await createJobPod(uuid, { maxJobDurationSeconds: 3, podTemplate: { annotations: REAL } });

    const run = await podRunner().waitForRun(name, 60_000);
    // The agent's Kubernetes mode takes SIGTERM as an ungraceful stop: it interrupts the command container, finishes
    // the job as stopped (-1) and exits with that status (--reflect-exit-status: 255). preStop hooks are not run.
    expect(run, run.output).to.include({ reason: "DeadlineExceeded", exitCode: 255 });
    expect(fakeBuildkite().job(uuid)).to.include({ state: "finished", exit_status: -1, signal_reason: "agent_stop" });
    const pod = await podWhen(name, "Failed", (p) => {
      expect(p.status?.phase).to.equal("Failed");
    });
    expect(pod.status).to.include({ reason: "DeadlineExceeded" });
    expect(pod.status?.containerStatuses?.[0]?.state?.terminated).to.include({ exitCode: 255, reason: "Error" });
    await eventually(
      () => {
        expect(processesRunning("sleep 287")).to.deep.equal([]);
      },
      { what: "the job's command to be gone" },
    );
  });

  it("stops the agent of a pod deleted while it runs, and the job's command with it", async () => {
    const uuid = fakeBuildkite().seedJob({ queue_key: QUEUE, command: "echo sleeping && sleep 288" });
    const name = await createJobPod(uuid, { podTemplate: { annotations: REAL } });
    await podWhen(name, "Running", (p) => {
      expect(p.status?.phase).to.equal("Running");
    });
    await eventually(
      () => {
        expect(fakeBuildkite().job(uuid).log).to.include("sleeping");
      },
      { what: "the job's command to start" },
    );
    expect(processesRunning("sleep 288")).to.have.lengthOf(1);

    await t.core.deleteNamespacedPod({ name, namespace: t.namespace });
    const run = await podRunner().waitForRun(name, 30_000);
    // As for the deadline: the agent stops the job at SIGTERM, Buildkite is told, and it exits with the job's -1.
    expect(run.exitCode, run.output).to.equal(255);
    expect(fakeBuildkite().job(uuid)).to.include({ state: "finished", exit_status: -1, signal_reason: "agent_stop" });
    await eventually(
      async () => {
        expect(await t.pod(name)).to.equal(undefined);
      },
      { what: "KWOK to remove the deleted pod" },
    );
    await eventually(
      () => {
        expect(processesRunning("sleep 288")).to.deep.equal([]);
      },
      { what: "the job's command to be gone" },
    );
  });
});
