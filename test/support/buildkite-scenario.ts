import type { KubeConfig } from "@kubernetes/client-node";
import { expect } from "chai";
import type { BuildkiteJob } from "../../operator/src/api/generated/buildkite-job.js";
import { jobResourceName } from "../../operator/src/api/names.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import type { FakeJobRecord } from "../fake-buildkite/views.js";
import { installCrds } from "./crds.js";
import { eventually } from "./eventually.js";
import { testNamespace } from "./global-cluster.js";
import { TestObjects } from "./objects.js";
import { PodRunner, RUNNER_ANNOTATION } from "./pod-runner.js";

export const TOKEN_SECRET = "bk-token";

/**
 * What a Buildkite scenario needs: a namespace enforcing Pod Security *restricted*, a fake Buildkite, the queue's
 * agent token in a Secret, and a pod-runner that runs the real agent for pods annotated `kwok.test/runner: real`.
 */
export class BuildkiteScenario {
  private constructor(
    readonly kc: KubeConfig,
    readonly t: TestObjects,
    readonly fake: FakeBuildkite,
    readonly runner: PodRunner,
  ) {}

  static async start(kc: KubeConfig, prefix: string): Promise<BuildkiteScenario> {
    await installCrds(kc);
    const namespace = await testNamespace(kc, prefix, {
      "pod-security.kubernetes.io/enforce": "restricted",
      "pod-security.kubernetes.io/enforce-version": "latest",
    });
    const t = new TestObjects(kc, namespace);
    const fake = await FakeBuildkite.start();
    await t.createTokenSecret(TOKEN_SECRET, fake.agentToken);
    const runner = await PodRunner.start({ kubeConfig: kc, namespace });
    return new BuildkiteScenario(kc, t, fake, runner);
  }

  async stop(): Promise<void> {
    await this.runner.stop();
    await this.fake.stop();
    await this.t.core.deleteNamespace({ name: this.t.namespace });
  }

  /**
   * A BuildkiteQueue served by the fake. `pods: "real"` runs its pods with the real agent; `"hold"` leaves them placed
   * but never started (nothing plays kubelet for them), as a pod waiting on its image would be; `"fast"` leaves them
   * to the fast runner (the agent API calls without the agent).
   */
  async queue(name: string, pods: "real" | "hold" | "fast", spec: Record<string, unknown> = {}): Promise<void> {
    await this.t.createQueue(name, {
      queue: name,
      endpoint: this.fake.agentEndpoint,
      agentTokenSecretRef: { name: TOKEN_SECRET, key: "token" },
      podTemplate: { annotations: { [RUNNER_ANNOTATION]: pods } },
      ...spec,
    });
  }

  /** Waits for the queue's condition to have `status` (and `reason` if given); returns its message. */
  async condition(queue: string, type: string, status: string, reason?: string, timeoutMs = 30_000): Promise<string> {
    return eventually(
      async () => {
        const q = await this.t.queue(queue);
        const c = q?.status?.conditions?.find((x) => x.type === type);
        expect(c, `${type} of queue ${queue}: ${JSON.stringify(q?.status?.conditions)}`).to.include({
          status,
          ...(reason ? { reason } : {}),
        });
        return c?.message ?? "";
      },
      { what: `queue ${queue} ${type}=${status}${reason ? ` (${reason})` : ""}`, timeoutMs },
    );
  }

  async buildkiteState(uuid: string, state: string, timeoutMs = 60_000): Promise<FakeJobRecord> {
    return eventually(
      () => {
        const job = this.fake.job(uuid);
        expect(job.state, `Buildkite job ${uuid}`).to.equal(state);
        return Promise.resolve(job);
      },
      { what: `Buildkite job ${uuid} ${state}`, timeoutMs },
    );
  }

  async jobPhase(uuid: string, phase: string, timeoutMs = 60_000): Promise<BuildkiteJob> {
    return this.t.jobWhen(
      jobResourceName(uuid),
      phase,
      (j) => {
        expect(j.status?.phase, JSON.stringify(j.status)).to.equal(phase);
      },
      timeoutMs,
    );
  }

  async podGone(uuid: string): Promise<void> {
    await eventually(
      async () => {
        expect(await this.t.pod(jobResourceName(uuid)), "the job's pod").to.equal(undefined);
      },
      { what: `the pod of job ${uuid} to be deleted`, timeoutMs: 30_000 },
    );
  }

  /** The BuildkiteJobs of one queue. */
  async jobsOf(queue: string): Promise<BuildkiteJob[]> {
    const list = (await this.t.custom.listNamespacedCustomObject({
      group: "buildkite.com",
      version: "v1alpha1",
      plural: "buildkitejobs",
      namespace: this.t.namespace,
    })) as { items: BuildkiteJob[] };
    return list.items.filter((j) => j.spec.queueRef.name === queue);
  }

  /** Successful acquisitions of each job by an agent: exactly one per job means no job ran twice. */
  acquisitions(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const r of this.fake.requests()) {
      if (r.route !== "agent.acquire" || r.status >= 300) continue;
      const uuid = /jobs\/([^/]+)\/acquire/.exec(r.path)?.[1] ?? "";
      counts.set(uuid, (counts.get(uuid) ?? 0) + 1);
    }
    return counts;
  }

  /** Uuids in the order the operator reserved them for the first time. */
  reservationOrder(): string[] {
    const seen = new Set<string>();
    for (const r of this.fake.requests()) {
      if (r.route !== "stacks.batch-reserve" || r.status !== 200) continue;
      const body = r.body as { job_uuids?: string[] };
      for (const uuid of body.job_uuids ?? []) seen.add(uuid);
    }
    return [...seen];
  }
}
