import type { KubeConfig } from "@kubernetes/client-node";
import { expect } from "chai";
import { cacheClaimName, cacheScope } from "../../operator/src/api/names.js";
import type { Operator } from "../../operator/src/operator.js";
import { installCrds } from "../support/crds.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { TestObjects } from "../support/objects.js";
import { startTestOperator } from "../support/operator.js";

const RESTRICTED = {
  "pod-security.kubernetes.io/enforce": "restricted",
  "pod-security.kubernetes.io/enforce-version": "latest",
};

describe("BuildkiteJob lifecycle (operator in-process, real control plane)", function () {
  this.timeout(90_000);
  let kc: KubeConfig;
  let operator: Operator | undefined;
  let t: TestObjects;

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    t = new TestObjects(kc, await testNamespace(kc, "jobs", RESTRICTED));
    await t.createTokenSecret();
    operator = await startTestOperator(kc, "job-lifecycle");
  });
  after(async () => {
    await operator?.stop();
    if (t.namespace) await t.core.deleteNamespace({ name: t.namespace });
  });

  const ready = (name: string) =>
    eventually(
      async () => {
        const q = await t.queue(name);
        expect(
          q?.status?.conditions?.find((c) => c.type === "Ready"),
          `queue ${name} status ${JSON.stringify(q?.status)}`,
        ).to.include({ status: "True" });
      },
      { what: `queue ${name} Ready` },
    );

  it("runs an ARM64_8X32 job on an arm64 node sized 8 CPU / 32Gi / 158G, in a restricted namespace; on success records exit 0, deletes the pod, keeps the job for its TTL", async () => {
    await t.createQueue("arm", { instanceShape: "LINUX_ARM64_8X32", maxVCPU: 16, jobTTLSecondsAfterFinished: 4 });
    await ready("arm");
    const name = await t.createJob("arm");
    const running = await t.jobWhen(name, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    const pod = await t.pod(name);
    // The pod as a whole is the shape; its command container may use all of it and holds the disk.
    expect(pod?.spec?.resources).to.deep.equal({
      requests: { cpu: "8", memory: "32Gi" },
      limits: { cpu: "8", memory: "32Gi" },
    });
    expect(pod?.spec?.containers.find((c) => c.name === "command")?.resources?.limits).to.deep.equal({
      cpu: "8",
      memory: "32Gi",
      "ephemeral-storage": "158G",
    });
    expect(pod?.spec?.nodeName).to.equal(running.status?.nodeName);
    const node = await t.core.readNode({ name: running.status?.nodeName ?? "" });
    expect(node.metadata?.labels?.["kubernetes.io/arch"]).to.equal("arm64");
    expect(running.status).to.include({
      shape: "LINUX_ARM64_8X32",
      podName: name,
      podUID: pod?.metadata?.uid,
      slot: 0,
    });

    await t.exitPod(name, 0);
    const done = await t.jobWhen(name, "Succeeded", (j) => {
      expect(j.status?.phase).to.equal("Succeeded");
    });
    expect(done.status).to.include({ exitCode: 0, reason: "Completed" });
    expect(done.status?.finishedAt).to.be.a("string");
    await eventually(
      async () => {
        expect(await t.pod(name), "the pod").to.equal(undefined);
      },
      { what: "the finished pod to be deleted" },
    );
    expect(await t.job(name), "the BuildkiteJob right after its pod went").to.not.equal(undefined);
    await eventually(
      async () => {
        expect(await t.job(name)).to.equal(undefined);
      },
      { what: "the BuildkiteJob to be deleted after its TTL", timeoutMs: 20_000 },
    );
    const reasons = (await t.events(name)).map((e) => e.reason);
    // One Event from the operator per job, its outcome: the steps on the way are in its status. (The scheduler's
    // Scheduled is on the pod, which has the job's name.)
    expect(reasons.filter((r) => r !== "Scheduled")).to.deep.equal(["Succeeded"]);
  });

  it("records a failure with its exit code and a warning Event", async () => {
    await t.createQueue("amd", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 8 });
    await ready("amd");
    const name = await t.createJob("amd");
    await t.jobWhen(name, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    await t.exitPod(name, 3);
    const failed = await t.jobWhen(name, "Failed", (j) => {
      expect(j.status?.phase).to.equal("Failed");
    });
    expect(failed.status).to.include({
      exitCode: 3,
      reason: "NonZeroExit",
      message: "The agent exited with code 3 (Error).",
    });
    await eventually(
      async () => {
        expect(await t.pod(name)).to.equal(undefined);
      },
      { what: "the failed pod to be deleted" },
    );
    await eventually(
      async () => {
        expect(await t.events(name)).to.deep.include({
          type: "Warning",
          reason: "NonZeroExit",
          message: failed.status?.message,
        });
      },
      { what: "the warning Event" },
    );
  });

  it("ends a job that outlives maxJobDurationSeconds as TimedOut", async () => {
    await t.createQueue("short", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2, maxJobDurationSeconds: 2 });
    await ready("short");
    const name = await t.createJob("short");
    const timedOut = await t.jobWhen(name, "TimedOut", (j) => {
      expect(j.status?.phase).to.equal("TimedOut");
    });
    expect(timedOut.status).to.include({ reason: "DeadlineExceeded" });
    expect(timedOut.status?.message).to.match(/longer than the queue's maxJobDurationSeconds \(2 s\)/);
    await eventually(
      async () => {
        expect(await t.pod(name)).to.equal(undefined);
      },
      { what: "the timed-out pod to be deleted" },
    );
  });

  it("fails a job whose pod is deleted from under it, loudly, and never runs it a second time", async () => {
    const name = await t.createJob("amd");
    const running = await t.jobWhen(name, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    await t.core.deleteNamespacedPod({ name, namespace: t.namespace, gracePeriodSeconds: 0 });
    const failed = await t.jobWhen(name, "Failed", (j) => {
      expect(j.status?.phase).to.equal("Failed");
    });
    expect(failed.status).to.include({ reason: "PodDeleted", podUID: running.status?.podUID });
    expect(failed.status?.message).to.match(/was deleted before the job finished; the job was not run again/);
    expect(await t.pod(name), "no second pod").to.equal(undefined);
  });

  it("keeps a job whose queue does not exist waiting with a condition, and runs it once the queue appears", async () => {
    const name = await t.createJob("later");
    const waiting = await t.jobWhen(name, "QueueNotFound", (j) => {
      expect(j.status?.reason).to.equal("QueueNotFound");
    });
    expect(waiting.status?.phase).to.equal("Pending");
    expect(waiting.status?.conditions?.find((c) => c.type === "QueueReady")).to.include({
      status: "False",
      reason: "QueueNotFound",
    });
    expect(waiting.status?.message).to.equal(
      `BuildkiteQueue later does not exist in namespace ${t.namespace}; create it or delete this job.`,
    );
    await t.createQueue("later", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2 });
    await t.jobWhen(name, "Running after the queue appeared", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
  });

  // Pending: passes alone, failed once in the full file (a third job got a slot while two held both); under study.
  it("runs at most maxVCPU ÷ shape vCPU jobs of a queue at once; the rest wait and start in priority order", async () => {
    await t.createQueue("two", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 5 });
    await ready("two");
    const first = await t.createJob("two", 0);
    const second = await t.createJob("two", 0);
    await t.jobWhen(first, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    await t.jobWhen(second, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    const low = await t.createJob("two", 1);
    const high = await t.createJob("two", 9);
    await t.jobWhen(low, "WaitingForSlot", (j) => {
      expect(j.status?.reason).to.equal("WaitingForSlot");
    });
    const highWaiting = await t.jobWhen(high, "WaitingForSlot", (j) => {
      expect(j.status?.reason).to.equal("WaitingForSlot");
    });
    expect(highWaiting.status?.message).to.equal(
      "All 2 slots of queue two are in use; waiting jobs start by priority, then age.",
    );
    expect((await t.queue("two"))?.status).to.include({ concurrency: 2 });

    await t.exitPod(first, 0);
    await t.jobWhen(high, "the higher-priority job to start first", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    expect((await t.job(low))?.status?.phase).to.equal("Pending");
    await eventually(
      async () => {
        expect((await t.queue("two"))?.status).to.include({ active: 2, waiting: 1, slots: "2/2" });
      },
      { what: "active count of queue two" },
    );
  });

  it("mounts a cache claim per pipeline and slot: a later job of the same pipeline gets the claim an earlier one (even a failed one) wrote, a job of another pipeline never does", async () => {
    // One slot, so every job runs in slot 0. The test cluster has no storage provisioner, so the pods stay Pending;
    // deleting a pod fails its job and frees the slot.
    await t.createQueue("cached", {
      instanceShape: "LINUX_AMD64_2X4",
      maxVCPU: 2,
      cache: [{ name: "gomod", size: "1Gi", mountPath: "/cache/go" }],
    });
    await ready("cached");
    const run = async (spec: Record<string, unknown>) => {
      const name = await t.createJob("cached", 0, spec);
      const started = await t.jobWhen(name, "its pod created", (j) => {
        expect(j.status?.podUID).to.be.a("string");
      });
      const pod = await t.pod(name);
      const claim = pod?.spec?.volumes?.find((v) => v.name === "cache-gomod")?.persistentVolumeClaim?.claimName ?? "";
      expect(pod?.spec?.containers.find((c) => c.name === "command")?.volumeMounts).to.deep.include({
        name: "cache-gomod",
        mountPath: "/cache/go",
      });
      await t.core.deleteNamespacedPod({ name, namespace: t.namespace, gracePeriodSeconds: 0 });
      await t.jobWhen(name, "Failed once its pod was deleted", (j) => {
        expect(j.status?.phase).to.equal("Failed");
      });
      return { slot: started.status?.slot, claim };
    };
    const app = await run({ pipelineSlug: "app", branch: "main" });
    const deploy = await run({ pipelineSlug: "deploy", branch: "main" });
    const appAgain = await run({ pipelineSlug: "app", branch: "pr-1" });
    expect([app.slot, deploy.slot, appAgain.slot]).to.deep.equal([0, 0, 0]);
    expect(deploy.claim, "another pipeline's claim").to.not.equal(app.claim);
    expect(appAgain.claim, "the same pipeline's claim").to.equal(app.claim);
    expect(app.claim).to.match(/^bkq-cached-gomod-[0-9a-f]{20}-0$/);

    const claim = await t.core.readNamespacedPersistentVolumeClaim({ name: app.claim, namespace: t.namespace });
    expect(claim.metadata?.labels).to.include({
      "buildkite.com/queue": "cached",
      "buildkite.com/cache": "gomod",
      "buildkite.com/slot": "0",
    });
    expect(claim.metadata?.annotations).to.include({ "buildkite.com/pipeline": "app" });
    expect(claim.metadata?.ownerReferences?.[0]).to.include({
      kind: "BuildkiteQueue",
      name: "cached",
      controller: true,
    });
    const claims = await t.core.listNamespacedPersistentVolumeClaim({
      namespace: t.namespace,
      labelSelector: "buildkite.com/queue=cached",
    });
    expect(claims.items.map((c) => c.metadata?.name).sort()).to.deep.equal([app.claim, deploy.claim].sort());
  });

  it("never mounts a claim of a job's name that the queue did not make", async () => {
    const queue = await t.queue("cached");
    if (!queue) throw new Error("queue cached is gone");
    const planted = cacheClaimName(
      queue,
      "gomod",
      cacheScope(
        queue,
        { name: "gomod", scope: "Pipeline" },
        { spec: { queueRef: { name: "cached" }, uuid: "", priority: 0, pipelineSlug: "release" } },
      ),
      0,
    );
    await t.core.createNamespacedPersistentVolumeClaim({
      namespace: t.namespace,
      body: {
        metadata: { name: planted },
        spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "1Gi" } } },
      },
    });
    const name = await t.createJob("cached", 0, { pipelineSlug: "release" });
    const failed = await t.jobWhen(name, "Failed", (j) => {
      expect(j.status?.phase).to.equal("Failed");
    });
    expect(failed.status?.reason).to.equal("PodRejected");
    expect(failed.status?.message).to.equal(
      `Cache claim ${planted} exists but was not made by queue cached, so the job does not mount it; delete the claim. Fix the queue's settings (or the namespace's policies); the job was not run.`,
    );
    expect(await t.pod(name), "no pod").to.equal(undefined);
  });

  it("fails a job whose pod the API server refuses, with the server's reason", async () => {
    await t.createQueue("refused", {
      instanceShape: "LINUX_AMD64_2X4",
      maxVCPU: 2,
      podTemplate: { runtimeClassName: "no-such-runtime" },
    });
    await ready("refused");
    const name = await t.createJob("refused");
    const failed = await t.jobWhen(name, "PodRejected", (j) => {
      expect(j.status?.phase).to.equal("Failed");
    });
    expect(failed.status?.reason).to.equal("PodRejected");
    expect(failed.status?.message).to.match(/The API server refused the job's pod: .*no-such-runtime/);
  });
});
