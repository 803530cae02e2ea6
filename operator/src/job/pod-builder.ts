import { controllerRef } from "../kube/resources.js";
import type { V1Container, V1EnvVar, V1Pod, V1Volume, V1VolumeMount } from "@kubernetes/client-node";
import { createHash } from "node:crypto";
import { ANNOTATIONS, LABELS, MANAGED_BY } from "../api/keys.js";
import { cacheClaimName, cacheScope, serviceAccountName } from "../api/names.js";
import { shapeResources } from "../api/shapes.js";
import { proxyEnv } from "../queue/children.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";

/** Where the projected IRSA token is mounted; the path the EKS webhook uses, so AWS SDKs find it unchanged. */
export const IRSA_TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
export const WORKSPACE_DIR = "/workspace";
/** The non-root identity job pods run as (Pod Security restricted forbids root). */
export const JOB_UID = 1000;

/**
 * Builds the one pod that runs `job` with the settings of `queue` (DESIGN.md §4). Pure: same inputs, same pod.
 * `slot` and the job's pipeline (and branch, for Branch-scoped caches) select the cache claims the pod mounts.
 */
export function buildPod(queue: BuildkiteQueue, job: BuildkiteJob, slot = 0): V1Pod {
  const { spec } = queue;
  const shape = shapeResources(spec.instanceShape);
  const name = job.metadata.name ?? "";
  const resources = { cpu: String(shape.vcpu), memory: shape.memory, "ephemeral-storage": shape.disk };
  const template = spec.podTemplate ?? {};
  const jobToken = job.metadata.annotations?.[ANNOTATIONS.agentTokenSecret];

  const volumes: V1Volume[] = [{ name: "workspace", emptyDir: { sizeLimit: shape.disk } }];
  const mounts: V1VolumeMount[] = [{ name: "workspace", mountPath: WORKSPACE_DIR }];
  const env: V1EnvVar[] = [
    // The job's own acquisition token when it has one (it can acquire this job only), else the queue's agent token.
    {
      name: "BUILDKITE_AGENT_TOKEN",
      valueFrom: {
        secretKeyRef:
          jobToken !== undefined
            ? { name: jobToken, key: "token" }
            : { name: spec.agentTokenSecretRef.name, key: spec.agentTokenSecretRef.key },
      },
    },
    { name: "BUILDKITE_AGENT_ENDPOINT", value: spec.endpoint },
    { name: "BUILDKITE_AGENT_TAGS", value: `queue=${spec.queue}` },
    { name: "BUILDKITE_AGENT_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
    { name: "BUILDKITE_BUILD_PATH", value: `${WORKSPACE_DIR}/builds` },
    { name: "BUILDKITE_PLUGINS_PATH", value: `${WORKSPACE_DIR}/plugins` },
    { name: "HOME", value: WORKSPACE_DIR },
  ];

  if (spec.aws) {
    volumes.push({
      name: "aws-iam-token",
      projected: {
        sources: [
          {
            serviceAccountToken: {
              audience: spec.aws.audience,
              expirationSeconds: spec.aws.tokenExpirationSeconds,
              path: "token",
            },
          },
        ],
      },
    });
    mounts.push({ name: "aws-iam-token", mountPath: IRSA_TOKEN_DIR, readOnly: true });
    // Set here rather than by the EKS webhook, so IRSA also works on clusters without it.
    env.push(
      { name: "AWS_ROLE_ARN", value: spec.aws.roleArn },
      { name: "AWS_WEB_IDENTITY_TOKEN_FILE", value: `${IRSA_TOKEN_DIR}/token` },
      { name: "AWS_REGION", value: spec.aws.region },
      { name: "AWS_DEFAULT_REGION", value: spec.aws.region },
      { name: "AWS_STS_REGIONAL_ENDPOINTS", value: "regional" },
      // CloudTrail names the session: which pipeline, build and job used the role.
      { name: "AWS_ROLE_SESSION_NAME", value: roleSessionName(job) },
      ...(spec.aws.stsEndpoint !== undefined ? [{ name: "AWS_ENDPOINT_URL_STS", value: spec.aws.stsEndpoint }] : []),
    );
  }

  for (const cache of spec.cache ?? []) {
    // The claim of the job's own scope (pipeline, or pipeline and branch): another pipeline's cache is never mounted.
    volumes.push({
      name: `cache-${cache.name}`,
      persistentVolumeClaim: { claimName: cacheClaimName(queue, cache.name, cacheScope(queue, cache, job), slot) },
    });
    mounts.push({ name: `cache-${cache.name}`, mountPath: cache.mountPath });
  }
  env.push(...proxyEnv(queue));
  env.push(...(template.env ?? []).map((e) => ({ name: e.name, value: e.value ?? "" })));

  const agent: V1Container = {
    name: "agent",
    image: spec.agentImage,
    command: ["buildkite-agent"],
    // --reflect-exit-status: the container exits with the job's exit status, so the pod (and kubectl) shows it.
    args: ["start", "--acquire-job", job.spec.uuid, "--reflect-exit-status"],
    env,
    resources: { requests: resources, limits: resources },
    securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] }, runAsNonRoot: true },
    volumeMounts: mounts,
    workingDir: WORKSPACE_DIR,
    // The agent takes SIGTERM as "finish the current job first", so a pod stopped for its deadline (or deleted by a
    // person) would keep running the job until SIGKILL and leave Buildkite to notice a lost agent minutes later.
    // SIGQUIT is the agent's ungraceful stop: it cancels the job and reports it at once.
    lifecycle: { preStop: { exec: { command: ["/bin/sh", "-c", "kill -QUIT 1"] } } },
  };

  const pod: V1Pod = {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name,
      namespace: job.metadata.namespace ?? "",
      labels: {
        ...template.labels,
        [LABELS.managedBy]: MANAGED_BY,
        [LABELS.component]: "job",
        [LABELS.queue]: queue.metadata.name ?? "",
        [LABELS.job]: name,
        [LABELS.jobUuid]: job.spec.uuid.toLowerCase(),
        [LABELS.slot]: String(slot),
        [LABELS.shape]: spec.instanceShape,
      },
      annotations: { ...template.annotations },
      ownerReferences: [controllerRef(job, true)],
    },
    spec: {
      restartPolicy: "Never",
      serviceAccountName: serviceAccountName(queue),
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      nodeSelector: { "kubernetes.io/arch": shape.arch, "kubernetes.io/os": "linux" },
      activeDeadlineSeconds: spec.maxJobDurationSeconds,
      terminationGracePeriodSeconds: 60,
      securityContext: {
        runAsNonRoot: true,
        runAsUser: JOB_UID,
        runAsGroup: JOB_UID,
        fsGroup: JOB_UID,
        seccompProfile: { type: "RuntimeDefault" },
      },
      containers: [agent],
      volumes,
      ...(template.tolerations ? { tolerations: template.tolerations } : {}),
      ...(template.runtimeClassName ? { runtimeClassName: template.runtimeClassName } : {}),
      ...(template.priorityClassName ? { priorityClassName: template.priorityClassName } : {}),
      ...(template.imagePullSecrets ? { imagePullSecrets: template.imagePullSecrets } : {}),
    },
  };
  (pod.metadata ??= {}).annotations = { ...pod.metadata.annotations, [ANNOTATIONS.specHash]: specHash(pod) };
  return pod;
}

/** STS's limit on a role session name: 2 to 64 characters of `[\w+=,.@-]`. */
const SESSION_NAME_MAX = 64;

/**
 * The AWS role session name of a job, `bk-<pipeline>-<build>-<job uuid>`, so CloudTrail shows which pipeline, build and
 * job used the role. Characters STS refuses become "-"; the pipeline slug is cut first, so the job uuid stays whole.
 */
export function roleSessionName(job: BuildkiteJob): string {
  const clean = (s: string): string => s.replace(/[^\w+=,.@-]/g, "-");
  const tail = `-${String(job.spec.buildNumber ?? 0)}-${clean(job.spec.uuid)}`;
  const pipeline = clean(job.spec.pipelineSlug ?? "job").slice(0, Math.max(0, SESSION_NAME_MAX - 3 - tail.length));
  return `bk-${pipeline}${tail}`.slice(0, SESSION_NAME_MAX);
}

/** A short, stable hash of a pod's spec and labels, recorded on the pod (as actions-runner-controller does). */
export function specHash(pod: V1Pod): string {
  return createHash("sha256")
    .update(JSON.stringify({ labels: pod.metadata?.labels, spec: pod.spec }))
    .digest("hex")
    .slice(0, 16);
}
