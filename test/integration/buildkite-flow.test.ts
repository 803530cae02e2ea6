import { PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobResourceName, jobTokenSecretName } from "../../operator/src/api/names.js";
import type { Operator } from "../../operator/src/operator.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import { BuildkiteScenario, TOKEN_SECRET } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { testCluster } from "../support/global-cluster.js";
import { startTestOperator } from "../support/operator.js";

const FAST = { pollIntervalMs: 250, stateCheckIntervalMs: 500, jobTokenProbeMs: 3_000 };

describe("Buildkite jobs flow from the Stacks API through BuildkiteJobs to pods run by the real agent", function () {
  this.timeout(180_000);
  let s: BuildkiteScenario;
  let operator: Operator | undefined;

  before(async () => {
    const kc = testCluster().kubeConfig();
    s = await BuildkiteScenario.start(kc, "bk-flow");
    operator = await startTestOperator(kc, "buildkite-flow", {
      buildkite: FAST,
      allowedEndpoints: [s.fake.agentEndpoint],
    });
  });
  after(async () => {
    await operator?.stop();
    await s.stop();
  });

  it("registers a custom stack per queue and runs a job: exit 3 and its log reach Buildkite, the BuildkiteJob is Failed with exit 3, the pod is deleted", async () => {
    await s.queue("happy", "real", { instanceShape: "LINUX_ARM64_2X4", maxVCPU: 4 });
    const message = await s.condition("happy", "Registered", "True");
    expect(message).to.match(
      /^Registered as Buildkite stack bk-op-bk-flow-[0-9a-f-]+happy-[0-9a-f]{16} for queue happy/,
    );
    expect(s.fake.stacks().find((st) => st.cluster_queue_key === "happy")).to.include({
      type: "custom",
      state: "connected",
    });

    const uuid = s.fake.seedJob({ queue_key: "happy", command: "echo marker-7f3a; exit 3" });
    const done = await s.buildkiteState(uuid, "finished");
    expect(done.exit_status).to.equal(3);
    expect(done.log).to.include("marker-7f3a");
    const job = await s.jobPhase(uuid, "Failed");
    expect(job.status).to.include({ exitCode: 3, reason: "NonZeroExit", shape: "LINUX_ARM64_2X4" });
    expect(job.metadata.ownerReferences?.[0]).to.include({ kind: "BuildkiteQueue", name: "happy" });
    await s.podGone(uuid);
    const run = s.runner.runs().find((r) => r.uuid === uuid);
    expect(run?.exitCode).to.equal(3);
    // The pod held a token for its one job, in a Secret its BuildkiteJob owns, never the queue's agent token.
    const registrations = s.fake.requests().filter((r) => r.route === "agent.register" && r.status < 300);
    expect(registrations.map((r) => r.token_class))
      .to.include("jat")
      .and.not.include("agent");
    const secret = await s.t.core.readNamespacedSecret({ name: jobTokenSecretName(uuid), namespace: s.t.namespace });
    expect(secret.metadata?.ownerReferences?.[0]).to.include({
      kind: "BuildkiteJob",
      name: jobResourceName(uuid),
      uid: job.metadata.uid,
    });
    expect((await s.t.queue("happy"))?.status?.conditions?.find((c) => c.type === "JobTokens")).to.include({
      status: "True",
      reason: "Issued",
    });
    const timeline = done.notifications.map((n) => n.detail);
    expect(
      timeline.some((d) => d.startsWith(`Created pod ${jobResourceName(uuid)} (LINUX_ARM64_2X4)`)),
      timeline.join(" | "),
    ).to.equal(true);
    expect(
      timeline.some((d) => d.startsWith("Pod placed on node ")),
      timeline.join(" | "),
    ).to.equal(true);
  });

  it("reserves nothing while Buildkite refuses job tokens (Required, the default), says so, and runs the job with its own token once they come", async () => {
    s.fake.injectFault({
      route: "stacks.job-acquisition-tokens",
      status: 404,
      count: 1,
      body: { message: "Not Found" },
    });
    const uuid = s.fake.seedJob({ queue_key: "required", command: "exit 0" });
    await s.queue("required", "real");
    const message = await s.condition("required", "JobTokens", "False", "JobTokensRefused");
    expect(message).to.include("no job is reserved").and.include("spec.jobTokens: Preferred");
    // Not reserved: the job stays offered to every stack instead of hiding behind a reservation nobody runs.
    expect(s.fake.job(uuid).state, "the job's state in Buildkite while job tokens are refused").to.equal("scheduled");
    expect(
      s.fake
        .requests()
        .filter((r) => JSON.stringify(r.body ?? {}).includes(uuid) && r.route?.includes("reserve") === true),
      "reserve calls for the job",
    ).to.deep.equal([]);
    await s.buildkiteState(uuid, "finished");
    const job = await s.jobPhase(uuid, "Succeeded");
    expect(job.metadata.annotations?.["buildkite.com/agent-token-secret"], "the job's own token Secret").to.equal(
      jobTokenSecretName(uuid),
    );
    await s.condition("required", "JobTokens", "True", "Issued");
  });

  it("keeps a job whose token Buildkite did not issue waiting for it, never switching the queue to the cluster token", async () => {
    const uuid = s.fake.seedJob({ queue_key: "odd-one", command: "exit 0" });
    // The probe and the first issue both answer "not issued" for this job; the next asks succeed.
    s.fake.injectFault({
      route: "stacks.job-acquisition-tokens",
      status: 201,
      count: 2,
      body: { job_acquisition_tokens: [], not_issued: [uuid] },
    });
    await s.queue("odd-one", "real");
    await s.buildkiteState(uuid, "finished");
    const job = await s.jobPhase(uuid, "Succeeded");
    expect(job.metadata.annotations?.["buildkite.com/agent-token-secret"], "the job's own token Secret").to.equal(
      jobTokenSecretName(uuid),
    );
    const q = await s.t.queue("odd-one");
    expect(
      q?.status?.conditions?.find((c) => c.type === "JobTokens"),
      "the queue's JobTokens",
    ).to.include({ status: "True", reason: "Issued" });
    expect(
      (await s.t.events("odd-one")).map((e) => e.reason),
      "the queue's Events",
    ).to.not.include("FallbackToAgentToken");
  });

  it("falls back to the queue's agent token only when the queue opts in (Preferred), and says so on the queue", async () => {
    s.fake.injectFault({
      route: "stacks.job-acquisition-tokens",
      status: 404,
      count: 1,
      body: { message: "Not Found" },
    });
    await s.queue("fallback", "real", { jobTokens: "Preferred" });
    const uuid = s.fake.seedJob({ queue_key: "fallback", command: "exit 0" });
    await s.buildkiteState(uuid, "finished");
    const message = await s.condition("fallback", "JobTokens", "False", "FallbackToAgentToken");
    expect(message).to.include("job pods get the queue's cluster agent token");
    const job = await s.jobPhase(uuid, "Succeeded");
    expect(job.metadata.annotations ?? {}).to.not.have.property("buildkite.com/agent-token-secret");
  });

  it("admits each job pod under Pod Security restricted with no API token, host path or docker socket, and the agent token only in the agent container", async () => {
    await s.queue("isolated", "hold", { aws: { roleArn: "arn:aws:iam::123456789012:role/ci", region: "eu-west-1" } });
    const uuid = s.fake.seedJob({ queue_key: "isolated" });
    await s.jobPhase(uuid, "Starting");
    const pod = await s.t.pod(jobResourceName(uuid));
    const spec = pod?.spec;
    expect(spec?.automountServiceAccountToken).to.equal(false);
    expect(spec?.hostNetwork ?? false).to.equal(false);
    expect(spec?.hostPID ?? false).to.equal(false);
    expect(spec?.volumes?.filter((v) => v.hostPath !== undefined)).to.deep.equal([]);
    const mounts = spec?.containers.flatMap((c) => c.volumeMounts ?? []) ?? [];
    expect(mounts.map((m) => m.mountPath)).to.not.include.members([
      "/var/run/docker.sock",
      "/var/run/secrets/kubernetes.io/serviceaccount",
    ]);
    // The only projected token is IRSA's, for STS's audience, not the API server's.
    const projected = spec?.volumes?.flatMap((v) => v.projected?.sources ?? []) ?? [];
    expect(projected.map((p) => p.serviceAccountToken?.audience)).to.deep.equal(["sts.amazonaws.com"]);
    expect(spec?.containers.map((c) => c.name)).to.deep.equal(["agent", "checkout", "command"]);
    // Only the agent holds a Buildkite token; the job's containers never do.
    const all = [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])];
    const withToken = all.filter((c) => c.env?.some((e) => e.name === "BUILDKITE_AGENT_TOKEN")).map((c) => c.name);
    expect(withToken).to.deep.equal(["agent"]);
    const agent = spec?.containers.find((c) => c.name === "agent");
    const tokenRef = agent?.env?.find((e) => e.name === "BUILDKITE_AGENT_TOKEN")?.valueFrom?.secretKeyRef;
    expect(tokenRef?.name).to.equal(jobTokenSecretName(uuid));
    for (const c of all)
      expect(c.securityContext, c.name).to.deep.include({
        allowPrivilegeEscalation: false,
        runAsNonRoot: true,
        capabilities: { drop: ["ALL"] },
      });
    s.fake.cancel(uuid);
    await s.jobPhase(uuid, "Canceled");
  });

  it("cancels a job canceled in Buildkite before its pod started: the pod is deleted and the job is Canceled", async () => {
    await s.queue("cancel-early", "hold");
    const uuid = s.fake.seedJob({ queue_key: "cancel-early" });
    await s.jobPhase(uuid, "Starting");
    s.fake.cancel(uuid);
    const job = await s.jobPhase(uuid, "Canceled");
    expect(job.status).to.include({ reason: "CanceledInBuildkite" });
    await s.podGone(uuid);
    expect(s.fake.job(uuid).state).to.equal("canceled");
  });

  it("lets the agent stop a job canceled while running; the job ends Canceled and its pod is deleted", async () => {
    await s.queue("cancel-running", "real");
    const uuid = s.fake.seedJob({ queue_key: "cancel-running", command: "echo started; sleep 60" });
    await s.buildkiteState(uuid, "running");
    s.fake.cancel(uuid);
    await s.buildkiteState(uuid, "canceled");
    const job = await s.jobPhase(uuid, "Canceled");
    expect(job.status?.reason).to.equal("CanceledInBuildkite");
    await s.podGone(uuid);
  });

  it("starts nothing on a paused queue (paused in the spec or in Buildkite) and resumes when unpaused", async () => {
    await s.queue("paused", "real", { paused: true });
    await s.condition("paused", "Dispatching", "False", "PausedInSpec");
    const uuid = s.fake.seedJob({ queue_key: "paused", command: "exit 0" });
    const listsBefore = s.fake.requests().filter((r) => r.route === "stacks.scheduled-jobs").length;
    await eventually(
      () => {
        expect(s.fake.requests().filter((r) => r.route === "stacks.scheduled-jobs").length).to.be.greaterThan(
          listsBefore + 3,
        );
        return Promise.resolve();
      },
      { what: "a few more polls" },
    );
    expect(await s.jobsOf("paused")).to.deep.equal([]);
    expect(s.fake.job(uuid).state).to.equal("scheduled");

    s.fake.pauseQueue("paused");
    await s.t.patchQueueSpec("paused", { paused: false });
    await s.condition("paused", "Dispatching", "False", "PausedInBuildkite");
    expect(s.fake.job(uuid).state).to.equal("scheduled");

    s.fake.resumeQueue("paused");
    await s.buildkiteState(uuid, "finished");
    await s.condition("paused", "Dispatching", "True", "Dispatching");
  });

  it("backs off through a storm of 429s on listing and loses nothing", async () => {
    await s.queue("storm", "real");
    await s.condition("storm", "Registered", "True");
    s.fake.injectFault({ route: "stacks.scheduled-jobs", status: 429, count: 12, retry_after: 1 });
    const uuids = [1, 2, 3].map(() => s.fake.seedJob({ queue_key: "storm", command: "exit 0" }));
    for (const uuid of uuids) await s.buildkiteState(uuid, "finished", 90_000);
    const throttled = s.fake.requests().filter((r) => r.route === "stacks.scheduled-jobs" && r.status === 429);
    expect(throttled.length).to.equal(12);
    for (const uuid of uuids) expect(s.acquisitions().get(uuid), uuid).to.equal(1);
    for (const uuid of uuids) await s.jobPhase(uuid, "Succeeded");
    expect(await s.jobsOf("storm")).to.have.length(3);
  });

  it("runs 30 jobs on a LINUX_AMD64_4X16 queue with maxVCPU 16: never more than 4 at once, reserved in priority order, each once", async () => {
    const uuids = Array.from({ length: 30 }, (_, i) =>
      s.fake.seedJob({ queue_key: "thirty", command: "sleep 0.3", priority: (i * 7) % 10 }),
    );
    let most = 0;
    const sampling = { on: true };
    const sampler = (async () => {
      while (sampling.on) {
        const active = (await s.jobsOf("thirty")).filter(
          (j) => !["Succeeded", "Failed", "Canceled", "TimedOut"].includes(j.status?.phase ?? ""),
        ).length;
        most = Math.max(most, active);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    try {
      await s.queue("thirty", "real", { instanceShape: "LINUX_AMD64_4X16", maxVCPU: 16 });
      for (const uuid of uuids) await s.buildkiteState(uuid, "finished", 150_000);
    } finally {
      sampling.on = false;
      await sampler;
    }
    expect(most, "most unfinished BuildkiteJobs at once").to.be.within(1, 4);
    const overlap = maxOverlap(s.runner.runs().filter((r) => r.uuid !== undefined && uuids.includes(r.uuid)));
    expect(overlap, "most agents running at once").to.be.within(1, 4);
    for (const uuid of uuids) expect(s.acquisitions().get(uuid), uuid).to.equal(1);
    const priority = new Map(uuids.map((u) => [u, s.fake.job(u).priority]));
    const order = s
      .reservationOrder()
      .filter((u) => priority.has(u))
      .map((u) => priority.get(u) ?? -1);
    expect(order).to.have.length(30);
    expect(order, "priorities in the order jobs were reserved").to.deep.equal([...order].sort((a, b) => b - a));
    for (const uuid of uuids) await s.jobPhase(uuid, "Succeeded");
    await eventually(
      async () => {
        expect((await s.t.queue("thirty"))?.status).to.include({ concurrency: 4, active: 0 });
      },
      { what: "every slot free again" },
    );
  });

  it("never runs a job twice with two operators on one queue", async () => {
    const second = await startTestOperator(s.kc, "buildkite-flow-second", {
      buildkite: FAST,
      allowedEndpoints: [s.fake.agentEndpoint],
    });
    try {
      await s.queue("twice", "real", { maxVCPU: 32 });
      const uuids = Array.from({ length: 6 }, () => s.fake.seedJob({ queue_key: "twice", command: "sleep 0.2" }));
      for (const uuid of uuids) await s.buildkiteState(uuid, "finished", 90_000);
      for (const uuid of uuids) expect(s.acquisitions().get(uuid), uuid).to.equal(1);
      const runs = s.runner.runs().filter((r) => r.uuid !== undefined && uuids.includes(r.uuid));
      expect(runs.map((r) => r.uuid).sort()).to.deep.equal([...uuids].sort());
      expect(await s.jobsOf("twice")).to.have.length(6);
    } finally {
      await second.stop();
    }
  });

  it("shows a rejected agent token on the queue with what to fix, and recovers when the Secret is fixed", async () => {
    await s.t.createTokenSecret("wrong-token", "bkct_not_a_real_token");
    await s.queue("bad-token", "real", { agentTokenSecretRef: { name: "wrong-token", key: "token" } });
    const message = await s.condition("bad-token", "Registered", "False", "AgentTokenRejected");
    expect(message).to.include("Secret wrong-token").and.include("cluster agent token");
    expect(message).to.not.include("bkct_not_a_real_token");
    const events = await s.t.events("bad-token");
    expect(events.some((e) => e.reason === "AgentTokenRejected" && e.type === "Warning")).to.equal(true);
    await s.t.replaceTokenSecret("wrong-token", s.fake.agentToken);
    await s.condition("bad-token", "Registered", "True", undefined, 60_000);
    expect(TOKEN_SECRET).to.not.equal("wrong-token");
  });

  it("sends a Secret's value to no endpoint the operator was not configured for, and only from Secrets marked as agent tokens", async () => {
    // Whoever may create a queue names the Secret and the endpoint: an attacker's server must never see a token.
    const attacker = await FakeBuildkite.start();
    try {
      await s.queue("deputy-endpoint", "real", { endpoint: attacker.agentEndpoint });
      const refused = await s.condition("deputy-endpoint", "Ready", "False", "EndpointNotAllowed");
      expect(refused).to.include(attacker.agentEndpoint).and.include("--allowed-endpoints");
      await s.condition("deputy-endpoint", "Registered", "False", "EndpointNotAllowed");
      expect(attacker.requests(), "requests the attacker's server received").to.deep.equal([]);
    } finally {
      await attacker.stop();
    }

    // A Secret that is not marked as an agent token (here, some other credential of the namespace) is never read out.
    await s.t.core.createNamespacedSecret({
      namespace: s.t.namespace,
      body: { metadata: { name: "db-password" }, stringData: { token: s.fake.agentToken } },
    });
    await s.queue("deputy-secret", "real", { agentTokenSecretRef: { name: "db-password", key: "token" } });
    const unmarked = await s.condition("deputy-secret", "Ready", "False", "AgentTokenSecretNotMarked");
    expect(unmarked).to.include(`kubectl label secret db-password -n ${s.t.namespace} buildkite.com/agent-token=true`);
    await s.condition("deputy-secret", "Registered", "False", "AgentTokenSecretNotMarked");
    expect(
      s.fake.stacks().filter((st) => st.cluster_queue_key === "deputy-secret"),
      "stacks registered with the unmarked Secret",
    ).to.deep.equal([]);
    // Marked by a person, the same Secret is used.
    await s.t.core.patchNamespacedSecret(
      {
        name: "db-password",
        namespace: s.t.namespace,
        body: { metadata: { labels: { "buildkite.com/agent-token": "true" } } },
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await s.condition("deputy-secret", "Registered", "True", undefined, 60_000);
  });

  it("finishes a deleted queue's work even when the operator was down at the delete: the waiting job is finished in Buildkite with why, the stack deregistered, then the queue goes", async () => {
    await s.queue("doomed", "hold");
    const uuid = s.fake.seedJob({ queue_key: "doomed" });
    await s.jobPhase(uuid, "Starting");
    await operator?.stop();
    operator = undefined;
    await s.t.custom.deleteNamespacedCustomObject({
      group: "buildkite.com",
      version: "v1alpha1",
      namespace: s.t.namespace,
      plural: "buildkitequeues",
      name: "doomed",
    });
    expect((await s.t.queue("doomed"))?.metadata.deletionTimestamp, "the queue, held by its finalizer").to.not.equal(
      undefined,
    );
    operator = await startTestOperator(s.kc, "buildkite-flow-after-delete", {
      buildkite: FAST,
      allowedEndpoints: [s.fake.agentEndpoint],
    });
    const finished = await s.buildkiteState(uuid, "finished");
    expect(finished.finish_detail).to.include(`BuildkiteQueue ${s.t.namespace}/doomed was deleted`);
    await eventually(
      async () => {
        expect(s.fake.stacks().find((st) => st.cluster_queue_key === "doomed")?.state, "the queue's stack").to.equal(
          "disconnected",
        );
        expect(await s.t.queue("doomed"), "the queue").to.equal(undefined);
      },
      { what: "the stack deregistered and the queue gone", timeoutMs: 60_000 },
    );
  });
});

/** The most runs whose [start, finish] intervals overlap at one moment. */
function maxOverlap(runs: readonly { startedAt: Date; finishedAt: Date | undefined }[]): number {
  const edges = runs
    .flatMap(
      (r) =>
        [
          [r.startedAt.getTime(), 1],
          [(r.finishedAt ?? new Date()).getTime(), -1],
        ] as const,
    )
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let most = 0;
  for (const [, delta] of edges) {
    now += delta;
    most = Math.max(most, now);
  }
  return most;
}
