import { PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobResourceName } from "../../operator/src/api/names.js";
import type { Operator } from "../../operator/src/operator.js";
import { expandPlugins } from "../fake-buildkite/plugins.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { testCluster } from "../support/global-cluster.js";
import { startTestOperator } from "../support/operator.js";

describe("Jobs that cannot run are failed and reported to Buildkite in words a person can act on", function () {
  this.timeout(120_000);
  let s: BuildkiteScenario;
  let operator: Operator | undefined;

  before(async () => {
    const kc = testCluster().kubeConfig();
    s = await BuildkiteScenario.start(kc, "bk-fail");
    operator = await startTestOperator(kc, "buildkite-failures", {
      allowedEndpoints: [s.fake.agentEndpoint],
      buildkite: { pollIntervalMs: 250, stateCheckIntervalMs: 500 },
      timeouts: { pendingTimeoutSeconds: 4, startGraceSeconds: 1 },
    });
  });
  after(async () => {
    await operator?.stop();
    await s.stop();
  });

  it("fails a job whose pod no node can take, finishes it in Buildkite with the scheduler's reason, and deletes the pod", async () => {
    await s.queue("huge", "real", { instanceShape: "LINUX_AMD64_64X256", maxVCPU: 64 });
    const uuid = s.fake.seedJob({ queue_key: "huge" });
    const job = await s.jobPhase(uuid, "Failed");
    expect(job.status?.reason).to.equal("Unschedulable");
    expect(job.status?.message).to.include("Insufficient cpu").and.include("64 vCPU");
    const finished = await s.buildkiteState(uuid, "finished");
    expect(finished.exit_status).to.equal(-1);
    expect(finished.finish_detail).to.include("No node could run the pod").and.include(jobResourceName(uuid));
    await s.podGone(uuid);
    const reported = await s.t.jobWhen(jobResourceName(uuid), "reported", (j) => {
      expect(j.status?.conditions?.find((c) => c.type === "ReportedToBuildkite")).to.include({ status: "True" });
    });
    expect(reported.status?.phase).to.equal("Failed");
    const reasons = (await s.t.events(jobResourceName(uuid))).map((e) => `${e.type}/${e.reason}`);
    expect(reasons).to.include.members(["Warning/Unschedulable", "Normal/Finished"]);
  });

  it("fails a job whose agent image cannot be pulled after the grace period and says which image", async () => {
    await s.queue("pull", "hold", { agentImage: "registry.invalid/agent:missing" });
    const uuid = s.fake.seedJob({ queue_key: "pull" });
    const name = jobResourceName(uuid);
    // Playing kubelet: the image pull fails.
    const pod = await eventually(
      async () => {
        const p = await s.t.pod(name);
        expect(p?.spec?.nodeName, "the pod placed on a node").to.be.a("string");
        return p;
      },
      { what: "the job's pod on a node" },
    );
    await s.t.core.patchNamespacedPodStatus(
      {
        name,
        namespace: s.t.namespace,
        body: {
          status: {
            phase: "Pending",
            containerStatuses: [
              {
                name: "agent",
                image: pod?.spec?.containers[0]?.image ?? "",
                imageID: "",
                ready: false,
                restartCount: 0,
                state: {
                  waiting: {
                    reason: "ImagePullBackOff",
                    message: 'Back-off pulling image "registry.invalid/agent:missing"',
                  },
                },
              },
            ],
          },
        },
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    const job = await s.jobPhase(uuid, "Failed");
    expect(job.status?.reason).to.equal("ImagePullFailed");
    const finished = await s.buildkiteState(uuid, "finished");
    expect(finished.finish_detail).to.include("registry.invalid/agent:missing").and.include("imagePullSecrets");
    await s.podGone(uuid);
  });

  it("shows a missing token Secret on the queue and takes no job until it exists", async () => {
    await s.queue("no-secret", "real", { agentTokenSecretRef: { name: "not-there", key: "token" } });
    const message = await s.condition("no-secret", "Registered", "False", "AgentTokenSecretMissing");
    expect(message).to.include("Secret not-there not found");
    const uuid = s.fake.seedJob({ queue_key: "no-secret", command: "exit 0" });
    await s.t.createTokenSecret("not-there", s.fake.agentToken);
    await s.buildkiteState(uuid, "finished", 90_000);
    await s.condition("no-secret", "Registered", "True");
  });

  it("fails a job whose pod the API server refuses and reports it to Buildkite", async () => {
    await s.t.core.createNamespacedResourceQuota({
      namespace: s.t.namespace,
      body: { metadata: { name: "no-pods" }, spec: { hard: { pods: "0" } } },
    });
    await s.queue("refused", "real");
    await s.condition("refused", "Registered", "True");
    await eventually(
      async () => {
        const quota = await s.t.core.readNamespacedResourceQuota({ name: "no-pods", namespace: s.t.namespace });
        expect(quota.status?.hard?.pods).to.equal("0");
      },
      { what: "the quota to be in force" },
    );
    const uuid = s.fake.seedJob({ queue_key: "refused" });
    const job = await s.jobPhase(uuid, "Failed");
    expect(job.status?.reason).to.equal("PodRejected");
    expect(job.status?.message).to.include("exceeded quota");
    const finished = await s.buildkiteState(uuid, "finished");
    expect(finished.finish_detail).to.include("refused the job's pod");
  });
  it("refuses a step that asks for what its queue does not allow: no pod, Buildkite told which field and which setting, and a Warning Event", async () => {
    await s.queue("strict", "real", { steps: { allowedImages: ["registry.example.com/ci/*"], allowSidecars: false } });
    const refusals = [
      {
        plugins: expandPlugins([{ kubernetes: { podSpecPatch: { serviceAccountName: "admin" } } }]),
        says: "podSpecPatch",
      },
      { image: "docker.io/evil/miner:1", says: "spec.steps.allowedImages" },
      {
        plugins: expandPlugins([{ kubernetes: { sidecars: [{ image: "registry.example.com/ci/redis:7" }] } }]),
        says: "spec.steps.allowSidecars",
      },
    ];
    for (const { says, ...step } of refusals) {
      const uuid = s.fake.seedJob({ queue_key: "strict", command: "echo never-runs", ...step });
      const job = await s.jobPhase(uuid, "Failed");
      expect(job.status?.reason).to.equal("StepRefused");
      expect(job.status?.message).to.include(says);
      const finished = await s.buildkiteState(uuid, "finished");
      expect(finished.exit_status).to.equal(-1);
      expect(finished.finish_detail).to.include(says);
      expect(await s.t.pod(jobResourceName(uuid)), "no pod").to.equal(undefined);
      const events = await s.t.core.listNamespacedEvent({
        namespace: s.t.namespace,
        fieldSelector: `involvedObject.name=${jobResourceName(uuid)}`,
      });
      expect(events.items.some((e) => e.reason === "StepRefused" && e.type === "Warning")).to.equal(true);
    }
  });
});
