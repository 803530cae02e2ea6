import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { join } from "node:path";
import type { BuildkiteJob } from "../../operator/src/api/generated/buildkite-job.js";
import { jobResourceName } from "../../operator/src/api/names.js";
import { createLogger } from "../../operator/src/observability/logger.js";
import { Operator } from "../../operator/src/operator.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import type { FakeJobRecord } from "../fake-buildkite/views.js";
import { installCrds } from "../support/crds.js";
import { eventually } from "../support/eventually.js";
import { testNamespace } from "../support/global-cluster.js";
import { TestObjects } from "../support/objects.js";
import { REAL_NODE_TOLERATION } from "../support/real-node.js";
import type { World } from "./world.js";

const TOKEN_SECRET = "bk-token";
const FAST = { pollIntervalMs: 250, stateCheckIntervalMs: 500 };
/** The containers of a job pod (docs/pod-layout.md) whose logs explain a failure. */
const POD_CONTAINERS = ["copy-agent", "agent", "checkout", "command"] as const;

/**
 * Buildkite jobs on the real node: a namespace enforcing Pod Security *restricted*, a fake Buildkite listening on the
 * pods' gateway (a pod in its own network namespace cannot reach the host's loopback), its agent token in a Secret,
 * and the operator in-process. Queues use the amd64 2X4 shape, the locally built agent image and the real node's
 * toleration, so their pods run under kubelet and containerd.
 */
export class RealNodeScenario {
  private constructor(
    readonly world: World,
    readonly t: TestObjects,
    readonly fake: FakeBuildkite,
    private readonly operator: Operator,
  ) {}

  static async start(world: World, prefix: string): Promise<RealNodeScenario> {
    const kc = world.cluster.kubeConfig();
    await installCrds(kc);
    const namespace = await testNamespace(kc, prefix, {
      "pod-security.kubernetes.io/enforce": "restricted",
      "pod-security.kubernetes.io/enforce-version": "latest",
    });
    const t = new TestObjects(kc, namespace);
    // A token of its own per run, so a search for it (steps.test.ts) cannot be fooled by a value written elsewhere.
    const fake = await FakeBuildkite.start({
      host: world.node.gatewayIp,
      agentToken: `bkct_${randomBytes(16).toString("hex")}`,
    });
    await t.createTokenSecret(TOKEN_SECRET, fake.agentToken);
    const logger = createLogger(
      "debug",
      createWriteStream(join(world.cluster.dir, `operator-${prefix}.log`), { flags: "a" }),
    );
    const operator = await Operator.start({
      kubeConfig: kc,
      logger,
      syncTimeoutMs: 20_000,
      buildkite: FAST,
      allowedEndpoints: [fake.agentEndpoint],
      // Images are imported on the node, never pulled: a container that cannot start is failed after 15 s, not 120.
      timeouts: { startGraceSeconds: 15 },
    });
    return new RealNodeScenario(world, t, fake, operator);
  }

  async stop(): Promise<void> {
    await this.operator.stop();
    await this.fake.stop();
    await this.t.core.deleteNamespace({ name: this.t.namespace });
  }

  /** A queue whose pods run on the real node; `spec` overrides or adds fields. */
  async queue(name: string, spec: Record<string, unknown> = {}): Promise<void> {
    await this.t.createQueue(name, {
      queue: name,
      endpoint: this.fake.agentEndpoint,
      agentTokenSecretRef: { name: TOKEN_SECRET, key: "token" },
      instanceShape: "LINUX_AMD64_2X4",
      maxVCPU: 2,
      agentImage: this.world.node.images.agent.ref,
      // The fake's jobs name a repository that does not exist: no checkout container, unless a test asks for one.
      checkout: { skip: true },
      podTemplate: { tolerations: [REAL_NODE_TOLERATION] },
      ...spec,
    });
  }

  async buildkiteState(uuid: string, state: string, timeoutMs = 120_000): Promise<FakeJobRecord> {
    return eventually(
      () => {
        const job = this.fake.job(uuid);
        expect(job.state, `Buildkite job ${uuid}: ${this.diagnose(uuid)}`).to.equal(state);
        return Promise.resolve(job);
      },
      { what: `Buildkite job ${uuid} ${state}`, timeoutMs, intervalMs: 250 },
    );
  }

  async jobPhase(uuid: string, phase: string, timeoutMs = 120_000): Promise<BuildkiteJob> {
    return this.t.jobWhen(
      jobResourceName(uuid),
      phase,
      (j) => {
        expect(j.status?.phase, JSON.stringify(j.status)).to.equal(phase);
      },
      timeoutMs,
    );
  }

  async podGone(uuid: string, timeoutMs = 90_000): Promise<void> {
    await eventually(
      async () => {
        expect(await this.t.pod(jobResourceName(uuid)), "the job's pod").to.equal(undefined);
      },
      { what: `the pod of job ${uuid} to be deleted`, timeoutMs },
    );
  }

  /**
   * The job's pod as first seen: it is deleted when the job ends, so a test that checks its spec starts polling as soon
   * as it seeds the job, and the pod lives at least as long as its images take to start.
   */
  async pod(uuid: string, timeoutMs = 90_000): Promise<V1Pod> {
    return eventually(
      async () => {
        const pod = await this.t.pod(jobResourceName(uuid));
        if (!pod) throw new Error(`no pod of job ${uuid} yet`);
        return pod;
      },
      { what: `the pod of job ${uuid}`, timeoutMs, intervalMs: 100 },
    );
  }

  /** What the pod's containers printed, while kubelet still has it: for failure messages. */
  diagnose(uuid: string): string {
    const logs = POD_CONTAINERS.map((container) => {
      const log = this.world.node.containerLog(this.t.namespace, jobResourceName(uuid), container);
      return log === "" ? "" : `${container} container log:\n${log.split("\n").slice(-15).join("\n")}`;
    }).filter((l) => l !== "");
    return logs.length === 0 ? "(no container log)" : logs.join("\n");
  }
}
