import type { BuildkiteJob, BuildkiteJobStatus } from "../../operator/src/api/generated/buildkite-job.js";
import type { ScheduledJob } from "../../operator/src/buildkite/types.js";
import type { BuildkiteQueue, BuildkiteQueueSpec } from "../../operator/src/api/generated/buildkite-queue.js";

/** Fixture builders: objects as the API server serves them (defaults filled), overridable per test. */
export function queueFixture(spec: Partial<BuildkiteQueueSpec> = {}, name = "linux", namespace = "ci"): BuildkiteQueue {
  return {
    apiVersion: "buildkite.com/v1alpha1",
    kind: "BuildkiteQueue",
    metadata: { name, namespace, uid: "11111111-2222-3333-4444-555555555555", generation: 1 },
    spec: {
      queue: name,
      agentTokenSecretRef: { name: "bk-agent-token", key: "token" },
      endpoint: "https://agent.buildkite.com/v3",
      instanceShape: "LINUX_AMD64_4X16",
      maxVCPU: 16,
      agentImage: "buildkite/agent:3",
      maxJobDurationSeconds: 28800,
      paused: false,
      jobTokens: "Required",
      jobTTLSecondsAfterFinished: 3600,
      network: { denyMetadata: true, egress: "Internet" },
      steps: { allowSidecars: true },
      checkout: { skip: false },
      ...spec,
    },
  };
}

/** The spec a person writes (no defaults): what tests send to the API server. */
export function queueManifest(name: string, spec: Record<string, unknown>): Record<string, unknown> {
  return {
    apiVersion: "buildkite.com/v1alpha1",
    kind: "BuildkiteQueue",
    metadata: { name },
    spec: {
      queue: name,
      agentTokenSecretRef: { name: "bk-agent-token" },
      instanceShape: "LINUX_AMD64_4X16",
      maxVCPU: 16,
      ...spec,
    },
  };
}

export function jobFixture(
  uuid = "0190a8f4-52c1-4b8e-9d4a-3f1c2b7e6a10",
  queue = "linux",
  namespace = "ci",
): BuildkiteJob {
  return {
    apiVersion: "buildkite.com/v1alpha1",
    kind: "BuildkiteJob",
    metadata: { name: `bkj-${uuid}`, namespace, uid: "99999999-8888-7777-6666-555555555555" },
    spec: { queueRef: { name: queue }, uuid, priority: 0 },
  };
}

let seq = 0;
/** A job as the Stacks API lists it, with a fresh uuid: scheduled at `at` (a second later for each made). */
export const scheduled = (
  priority: number,
  at = `2026-03-01T12:00:${String(10 + seq).padStart(2, "0")}Z`,
): ScheduledJob => {
  seq++;
  const id = `00000000-0000-4000-8000-${String(seq).padStart(12, "0")}`;
  return {
    id,
    priority,
    agent_query_rules: ["queue=q"],
    scheduled_at: at,
    pipeline: { slug: "p" },
    build: { number: 7, branch: "main" },
    step: { key: null },
  };
};
/** A BuildkiteJob of queue ci/linux with the given status and annotations. */
export const jobWith = (
  uuid: string,
  status: BuildkiteJobStatus = {},
  annotations: Record<string, string> = {},
): BuildkiteJob => {
  const j = jobFixture(uuid);
  j.metadata.annotations = annotations;
  j.status = status;
  return j;
};
