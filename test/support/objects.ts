import {
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  setHeaderOptions,
  type KubeConfig,
  type V1Pod,
} from "@kubernetes/client-node";
import type { BuildkiteJob } from "../../operator/src/api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../../operator/src/api/generated/buildkite-queue.js";
import { isNotFound } from "../../operator/src/kube/field-manager.js";
import { eventually } from "./eventually.js";
import { queueManifest } from "./fixtures.js";

const group = "buildkite.com";
const version = "v1alpha1";
const mergePatch = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

/** Typed reads and writes of the test's own objects in one namespace, so tests read as what they check. */
export class TestObjects {
  readonly core: CoreV1Api;
  readonly custom: CustomObjectsApi;
  private jobCount = 0;

  constructor(
    kc: KubeConfig,
    readonly namespace: string,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
    this.custom = kc.makeApiClient(CustomObjectsApi);
  }

  async createTokenSecret(name = "bk-agent-token", token = "test-agent-token"): Promise<void> {
    await this.core.createNamespacedSecret({
      namespace: this.namespace,
      body: { metadata: { name, labels: { "buildkite.com/agent-token": "true" } }, stringData: { token } },
    });
  }

  async replaceTokenSecret(name: string, token: string): Promise<void> {
    await this.core.replaceNamespacedSecret({
      name,
      namespace: this.namespace,
      body: { metadata: { name, labels: { "buildkite.com/agent-token": "true" } }, stringData: { token } },
    });
  }

  async createQueue(name: string, spec: Record<string, unknown> = {}): Promise<void> {
    await this.custom.createNamespacedCustomObject({
      group,
      version,
      namespace: this.namespace,
      plural: "buildkitequeues",
      body: queueManifest(name, spec),
    });
  }

  async patchQueueSpec(name: string, spec: Record<string, unknown>): Promise<void> {
    await this.custom.patchNamespacedCustomObject(
      { group, version, namespace: this.namespace, plural: "buildkitequeues", name, body: { spec } },
      mergePatch,
    );
  }

  async queue(name: string): Promise<BuildkiteQueue | undefined> {
    return this.read<BuildkiteQueue>("buildkitequeues", name);
  }

  /** Creates a BuildkiteJob for `queue` with a fresh UUID (and `spec` fields such as pipelineSlug) and returns its name. */
  async createJob(queue: string, priority = 0, spec: Record<string, unknown> = {}): Promise<string> {
    const uuid = `0190a8f4-52c1-4b8e-9d4a-${(Date.now() % 1e8).toString().padStart(8, "0")}${String(++this.jobCount).padStart(4, "0")}`;
    const name = `bkj-${uuid}`;
    await this.custom.createNamespacedCustomObject({
      group,
      version,
      namespace: this.namespace,
      plural: "buildkitejobs",
      body: {
        apiVersion: `${group}/${version}`,
        kind: "BuildkiteJob",
        metadata: { name },
        spec: { ...spec, queueRef: { name: queue }, uuid, priority },
      },
    });
    return name;
  }

  async job(name: string): Promise<BuildkiteJob | undefined> {
    return this.read<BuildkiteJob>("buildkitejobs", name);
  }

  /** Waits until the job's status satisfies `check` (which throws with what it saw otherwise). */
  async jobWhen(
    name: string,
    what: string,
    check: (job: BuildkiteJob) => void,
    timeoutMs = 30_000,
  ): Promise<BuildkiteJob> {
    return eventually(
      async () => {
        const job = await this.job(name);
        if (!job) throw new Error(`BuildkiteJob ${name} does not exist`);
        check(job);
        return job;
      },
      { what: `${what} (job ${name})`, timeoutMs },
    );
  }

  async pod(name: string): Promise<V1Pod | undefined> {
    try {
      return await this.core.readNamespacedPod({ name, namespace: this.namespace });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Tells the test cluster's fake kubelet (KWOK) to end the pod's container with `code`. */
  async exitPod(name: string, code: number): Promise<void> {
    await this.core.patchNamespacedPod(
      { name, namespace: this.namespace, body: { metadata: { annotations: { "kwok.test/exit-code": String(code) } } } },
      mergePatch,
    );
  }

  async events(name: string): Promise<{ type: string; reason: string; message: string }[]> {
    const list = await this.core.listNamespacedEvent({
      namespace: this.namespace,
      fieldSelector: `involvedObject.name=${name}`,
    });
    return list.items.map((e) => ({ type: e.type ?? "", reason: e.reason ?? "", message: e.message ?? "" }));
  }

  private async read<T>(plural: string, name: string): Promise<T | undefined> {
    try {
      return (await this.custom.getNamespacedCustomObject({
        group,
        version,
        namespace: this.namespace,
        plural,
        name,
      })) as T;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }
}
