import type { KubeConfig, V1Container, V1ContainerStatus, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { createWriteStream } from "node:fs";
import { join } from "node:path";
import type { BuildkiteJob } from "../../operator/src/api/generated/buildkite-job.js";
import { createLogger } from "../../operator/src/observability/logger.js";
import type { Operator } from "../../operator/src/operator.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import { installCrds } from "../support/crds.js";
import { eventually } from "../support/eventually.js";
import { FAST_RUNNER, FastRunner, type FastRunnerOptions } from "../support/fast-runner.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { TestObjects } from "../support/objects.js";
import { startTestOperator } from "../support/operator.js";
import { RUNNER_ANNOTATION } from "../support/pod-runner.js";
import { rolePod } from "../support/role-pod.js";

const FAST = { pollIntervalMs: 250, stateCheckIntervalMs: 500 };
const JOBS = 200;

/** Successful acquires per job in the fake's request log: exactly one each means no job ran twice. */
function acquisitions(fake: FakeBuildkite): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of fake.requests()) {
    if (r.route !== "agent.acquire" || r.status >= 300) continue;
    const uuid = /jobs\/([^/]+)\/acquire/.exec(r.path)?.[1] ?? "";
    counts.set(uuid, (counts.get(uuid) ?? 0) + 1);
  }
  return counts;
}

/**
 * The fast runner plays kubelet and agent over the fake's agent API, without a process per job: the operator's pods
 * (annotated `kwok.test/runner: fast`) and, with adoptAll, pods of other controllers that KWOK made Running.
 */
describe("FastRunner: job pods run over the agent API (real control plane, fake Buildkite)", function () {
  this.timeout(240_000);
  let kc: KubeConfig;
  let fake: FakeBuildkite;
  const namespaces: string[] = [];
  const runners: FastRunner[] = [];

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    fake = await FakeBuildkite.start();
  });
  after(async () => {
    await Promise.all(runners.map((r) => r.stop()));
    await fake.stop();
    const t = new TestObjects(kc, "default");
    await Promise.all(namespaces.map((name) => t.core.deleteNamespace({ name })));
  });

  async function namespace(prefix: string, labels: Record<string, string> = {}): Promise<TestObjects> {
    const t = new TestObjects(kc, await testNamespace(kc, prefix, labels));
    namespaces.push(t.namespace);
    await t.createTokenSecret("bk-token", fake.agentToken);
    return t;
  }

  async function runner(t: TestObjects, options: Partial<FastRunnerOptions> = {}): Promise<FastRunner> {
    const logger = createLogger(
      "debug",
      createWriteStream(join(testCluster().dir, `fast-runner-${t.namespace}.log`), { flags: "a" }),
    );
    const r = await FastRunner.start({
      kubeConfig: kc,
      namespaces: [t.namespace],
      fakeEndpoint: fake.agentEndpoint,
      logger,
      ...options,
    });
    runners.push(r);
    return r;
  }

  it(`runs ${JOBS} jobs from the operator's pods: each acquired once, finished in Buildkite, every BuildkiteJob Succeeded`, async () => {
    const t = await namespace("fast", {
      "pod-security.kubernetes.io/enforce": "restricted",
      "pod-security.kubernetes.io/enforce-version": "latest",
    });
    const fast = await runner(t);
    let operator: Operator | undefined;
    try {
      operator = await startTestOperator(kc, "fast-runner", {
        buildkite: FAST,
        allowedEndpoints: [fake.agentEndpoint],
      });
      await t.createQueue("fast", {
        queue: "fast",
        endpoint: fake.agentEndpoint,
        agentTokenSecretRef: { name: "bk-token", key: "token" },
        instanceShape: "LINUX_AMD64_2X4",
        maxVCPU: 64,
        podTemplate: { annotations: { [RUNNER_ANNOTATION]: FAST_RUNNER } },
      });
      const started = Date.now();
      const uuids = Array.from({ length: JOBS }, () => fake.seedJob({ queue_key: "fast", command: "true" }));
      await eventually(
        () => {
          const open = uuids.filter((u) => fake.job(u).state !== "finished");
          expect(open, `${open.length} jobs not finished`).to.have.length(0);
        },
        { timeoutMs: 180_000, intervalMs: 250, what: `${JOBS} jobs finished in Buildkite` },
      );
      const elapsedMs = Date.now() - started;
      const podMs = [...fast.runs().values()].map((r) => r.finishedAt - r.startedAt).sort((a, b) => a - b);
      console.log(
        `      ${JOBS} jobs finished in Buildkite ${(elapsedMs / 1000).toFixed(1)} s after seeding (${Math.round(JOBS / (elapsedMs / 60_000))} jobs/min);` +
          ` the runner took ${podMs[podMs.length >> 1] ?? 0} ms per pod (median), ${podMs.at(-1) ?? 0} ms at most; ${JSON.stringify(fast.stats())}`,
      );

      const notZero = uuids.filter((u) => fake.job(u).exit_status !== 0);
      expect(
        notZero.map((u) => `${u}: exit ${String(fake.job(u).exit_status)} ${fake.job(u).finish_detail ?? ""}`),
        `jobs that did not exit 0; the runner's refused calls: ${JSON.stringify(fast.stats().refused)}`,
      ).to.deep.equal([]);
      const acquired = acquisitions(fake);
      expect(
        uuids.filter((u) => acquired.get(u) !== 1),
        "jobs not acquired exactly once",
      ).to.deep.equal([]);
      await eventually(
        async () => {
          const list = (await t.custom.listNamespacedCustomObject({
            group: "buildkite.com",
            version: "v1alpha1",
            plural: "buildkitejobs",
            namespace: t.namespace,
          })) as { items: BuildkiteJob[] };
          const statuses = new Map(list.items.map((j) => [j.spec.uuid, j.status]));
          const notDone = uuids.filter((u) => statuses.get(u)?.phase !== "Succeeded");
          expect(
            notDone,
            `BuildkiteJobs not Succeeded, e.g. ${JSON.stringify(notDone.slice(0, 2).map((u) => [u, statuses.get(u)]))}`,
          ).to.have.length(0);
        },
        { timeoutMs: 60_000, intervalMs: 500, what: "every BuildkiteJob Succeeded" },
      );
      const runs = fast.runs();
      expect(uuids.filter((u) => runs.get(u)?.exitCode !== 0)).to.deep.equal([]);
      expect(fast.stats()).to.include({ acquireFailures: 0, failed: 0 });
      expect(fast.stats().succeeded).to.be.at.least(JOBS);
      // Each acquire carried the header the real agent sends; no token value is in the log's headers.
      const acquires = fake.requests().filter((r) => r.route === "agent.acquire");
      expect(acquires.every((r) => r.headers["x-buildkite-lock-acquire-job"] === "1")).to.equal(true);
    } finally {
      await operator?.stop();
    }
  });

  it("with adoptAll takes Running pods of other controllers: the agent-stack-k8s env form, exit codes 27 and 0 on refusals, and leaves pods it must not run", async () => {
    const t = await namespace("fast-adopt");
    const fastRunner = await runner(t, { adoptAll: true, exitCode: (uuid) => (uuid === failing ? 3 : 0) });
    // As agent-stack-k8s: a stack reserves the job, then its pod acquires it.
    const stack = await stacksApi("POST", "/v3/stacks/register", {
      key: "fast-adopt",
      type: "kubernetes",
      queue_key: "adopt",
      metadata: {},
    });
    expect(stack.status).to.equal(201);
    const reservedJob = fake.seedJob({ queue_key: "adopt" });
    const reserve = await stacksApi("PUT", "/v3/stacks/fast-adopt/scheduled-jobs/batch-reserve", {
      job_uuids: [reservedJob],
      reservation_expiry_seconds: 300,
    });
    expect(reserve.body).to.deep.include({ reserved: [reservedJob] });
    const failing = fake.seedJob({ queue_key: "adopt" });
    const canceled = fake.seedJob({ queue_key: "adopt" });
    fake.cancel(canceled);
    const otherQueue = fake.seedJob({ queue_key: "elsewhere" });

    const tokenRef = { name: "BUILDKITE_AGENT_TOKEN", valueFrom: { secretKeyRef: { name: "bk-token", key: "token" } } };
    const envAgent = (uuid: string): V1Container => ({
      name: "agent",
      image: "buildkite/agent:3",
      args: ["start"],
      env: [
        { name: "BUILDKITE_AGENT_ACQUIRE_JOB", value: uuid },
        tokenRef,
        { name: "BUILDKITE_AGENT_TAGS", value: "queue=adopt" },
      ],
    });
    await Promise.all([
      createPod(t, "stack-job", [envAgent(reservedJob), { name: "container-0", image: "alpine" }]),
      createPod(t, "args-job", [
        {
          name: "agent",
          image: "buildkite/agent:3",
          args: ["start", "--acquire-job", failing, "--reflect-exit-status"],
          env: [tokenRef, { name: "BUILDKITE_AGENT_TAGS", value: "queue=adopt" }],
        },
      ]),
      createPod(t, "canceled-job", [envAgent(canceled)]),
      createPod(t, "wrong-queue", [envAgent(otherQueue)]),
      createPod(t, "no-job", [{ name: "main", image: "alpine" }]),
      createPod(t, "service", [{ name: "main", image: "alpine" }], { restartPolicy: "Always" }),
      createPod(t, "real-runner", [envAgent(fake.seedJob({ queue_key: "adopt" }))], {
        annotations: { [RUNNER_ANNOTATION]: "real" },
      }),
    ]);

    const terminated = async (name: string): Promise<{ phase: string | undefined; codes: (number | undefined)[] }> =>
      eventually(
        async () => {
          const pod = await t.pod(name);
          const phase = pod?.status?.phase;
          expect(phase, `pod ${name}`).to.be.oneOf(["Succeeded", "Failed"]);
          return { phase, codes: pod?.status?.containerStatuses?.map((s) => s.state?.terminated?.exitCode) ?? [] };
        },
        { timeoutMs: 30_000, what: `pod ${name} terminated` },
      );

    expect(await terminated("stack-job")).to.deep.equal({ phase: "Succeeded", codes: [0, 0] });
    expect(fake.job(reservedJob)).to.include({ state: "finished", exit_status: 0 });
    // --reflect-exit-status: the agent exits with the job's status.
    expect(await terminated("args-job")).to.deep.equal({ phase: "Failed", codes: [3] });
    expect(fake.job(failing)).to.include({ state: "finished", exit_status: 3 });
    // 422 on acquire: exit 27; 404 (another queue's job): the real agent (3.138.1) logs it and exits 0.
    expect(await terminated("canceled-job")).to.deep.equal({ phase: "Failed", codes: [27] });
    expect(await terminated("wrong-queue")).to.deep.equal({ phase: "Succeeded", codes: [0] });
    expect(fake.job(otherQueue).state).to.equal("scheduled");
    expect(await terminated("no-job")).to.deep.equal({ phase: "Succeeded", codes: [0] });
    expect(fastRunner.stats()).to.include({ handled: 5, succeeded: 3, failed: 2, acquireFailures: 2 });
    expect(fastRunner.runs().get(canceled)).to.include({ pod: "canceled-job", exitCode: 27 });
    // Left alone: a pod that restarts forever, and one for the real agent's runner.
    for (const name of ["service", "real-runner"])
      expect((await t.pod(name))?.status?.phase, name).to.not.be.oneOf(["Succeeded", "Failed"]);
    const calls = fake
      .requests()
      .filter((r) => r.path.includes(reservedJob))
      .map((r) => r.route);
    expect(calls).to.deep.equal(["agent.acquire", "agent.start", "agent.chunks", "agent.finish"]);
  });

  it("polls a running job as the agent does: one cancelled mid-run is finished as signalled and its pod exits 255", async () => {
    const t = await namespace("fast-cancel");
    const fastRunner = await runner(t, { durationMs: 120_000 });
    const uuid = fake.seedJob({ queue_key: "cancel" });
    await createPod(
      t,
      "long-job",
      [
        {
          name: "agent",
          image: "buildkite/agent:3",
          args: ["start", "--acquire-job", uuid, "--reflect-exit-status"],
          env: [
            { name: "BUILDKITE_AGENT_TOKEN", value: fake.agentToken },
            { name: "BUILDKITE_AGENT_TAGS", value: "queue=cancel" },
          ],
        },
      ],
      { annotations: { [RUNNER_ANNOTATION]: FAST_RUNNER } },
    );
    await eventually(
      async () => {
        expect(fake.job(uuid).state).to.equal("running");
        expect((await t.pod("long-job"))?.status?.phase).to.equal("Running");
      },
      { what: "the job running and its pod Running" },
    );
    fake.cancel(uuid);
    await eventually(
      () => {
        expect(fake.job(uuid)).to.include({
          state: "canceled",
          exit_status: -1,
          signal: "SIGTERM",
          signal_reason: "cancel",
        });
      },
      { timeoutMs: 10_000, what: "the job finished as canceled" },
    );
    await eventually(
      async () => {
        const pod = await t.pod("long-job");
        expect(pod?.status?.phase).to.equal("Failed");
        expect(pod?.status?.containerStatuses?.[0]?.state?.terminated?.exitCode).to.equal(255);
      },
      { what: "the pod Failed with 255" },
    );
    expect(fastRunner.runs().get(uuid)?.exitCode).to.equal(255);
  });

  it("runs the pod of one role per container (docs/pod-layout.md): acquires as `agent`, ends every container as the kubelet", async () => {
    const t = await namespace("fast-roles");
    const fastRunner = await runner(t, { exitCode: () => 2 });
    const uuid = fake.seedJob({ queue_key: "roles" });
    const pod = rolePod({
      name: "roles-job",
      uuid,
      queue: "roles",
      endpoint: fake.agentEndpoint,
      tokenSecret: "bk-token",
      command: "make test",
      sidecars: [{ image: "postgres:17" }],
      annotations: { [RUNNER_ANNOTATION]: FAST_RUNNER },
    });
    await t.core.createNamespacedPod({ namespace: t.namespace, body: pod });
    const ended = await eventually(
      async () => {
        const p = await t.pod("roles-job");
        expect(p?.status?.phase).to.equal("Failed");
        return p;
      },
      { what: "the pod Failed" },
    );
    const codes = (list: V1ContainerStatus[] | undefined): Record<string, number | undefined> =>
      Object.fromEntries((list ?? []).map((s) => [s.name, s.state?.terminated?.exitCode]));
    // The job ran and failed with 2: `command` exits with it, the agent (no reflect-exit-status) with 0.
    expect(codes(ended?.status?.containerStatuses)).to.deep.equal({ agent: 0, checkout: 0, command: 2 });
    expect(codes(ended?.status?.initContainerStatuses)).to.deep.equal({ "copy-agent": 0, "sidecar-0": 0 });
    expect(fake.job(uuid)).to.include({ state: "finished", exit_status: 2 });
    expect(fastRunner.runs().get(uuid)).to.include({ pod: "roles-job", exitCode: 0 });
  });

  it("waits out 423 Locked for its Retry-After, and retries a start that failed with 503", async () => {
    const t = await namespace("fast-locked");
    await runner(t);
    const uuid = fake.seedJob({ queue_key: "locked", state: "waiting", retry_after_seconds: 1 });
    fake.injectFault({ route: "agent.start", status: 503, count: 1 });
    await createPod(
      t,
      "locked-job",
      [
        {
          name: "agent",
          image: "buildkite/agent:3",
          args: ["start", "--acquire-job", uuid],
          env: [
            { name: "BUILDKITE_AGENT_TOKEN", value: fake.agentToken },
            { name: "BUILDKITE_AGENT_TAGS", value: "queue=locked" },
          ],
        },
      ],
      { annotations: { [RUNNER_ANNOTATION]: FAST_RUNNER } },
    );
    const of = (route: string): { at: number; status: number }[] =>
      fake
        .requests()
        .filter((r) => r.route === route && r.path.includes(uuid))
        .map((r) => ({ at: Date.parse(r.at), status: r.status }));
    await eventually(
      () => {
        expect(of("agent.acquire").map((r) => r.status)).to.include(423);
      },
      { what: "a locked acquire" },
    );
    fake.unlock(uuid);
    await eventually(
      () => {
        expect(fake.job(uuid)).to.include({ state: "finished", exit_status: 0 });
      },
      { what: "the job finished" },
    );
    const acquires = of("agent.acquire");
    expect(acquires.map((r) => r.status).at(-1)).to.equal(200);
    expect(acquires.filter((r) => r.status === 200)).to.have.length(1);
    for (let i = 1; i < acquires.length; i++)
      expect((acquires[i]?.at ?? 0) - (acquires[i - 1]?.at ?? 0), "time between acquires").to.be.at.least(900);
    expect(of("agent.start").map((r) => r.status)).to.deep.equal([503, 200]);
    await eventually(
      async () => {
        expect((await t.pod("locked-job"))?.status?.phase).to.equal("Succeeded");
      },
      { what: "the pod Succeeded" },
    );
  });

  async function stacksApi(method: string, path: string, body: unknown): Promise<{ status: number; body: unknown }> {
    const res = await fetch(`${fake.url}${path}`, {
      method,
      headers: { Authorization: `Token ${fake.agentToken}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }
});

/** A bare pod, as another controller would create it; restartPolicy Never unless told, as a Kubernetes Job's pods. */
async function createPod(
  t: TestObjects,
  name: string,
  containers: V1Container[],
  extra: { restartPolicy?: string; annotations?: Record<string, string> } = {},
): Promise<void> {
  const pod: V1Pod = {
    metadata: { name, ...(extra.annotations ? { annotations: extra.annotations } : {}) },
    spec: {
      restartPolicy: extra.restartPolicy ?? "Never",
      nodeSelector: { "kubernetes.io/arch": "amd64" },
      containers,
    },
  };
  await t.core.createNamespacedPod({ namespace: t.namespace, body: pod });
}
