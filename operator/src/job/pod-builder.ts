import { controllerRef } from "../kube/resources.js";
import type { V1EnvVar, V1Pod, V1TopologySpreadConstraint, V1Volume, V1VolumeMount } from "@kubernetes/client-node";
import { createHash } from "node:crypto";
import { ANNOTATIONS, LABELS, MANAGED_BY } from "../api/keys.js";
import { cacheClaimName, cacheScope, serviceAccountName } from "../api/names.js";
import { shapeResources } from "../api/shapes.js";
import {
  agentContainer,
  checkoutContainer,
  commandContainer,
  copyAgentContainer,
  imageCheckContainer,
  JOB_UID,
  sidecarContainer,
  WORKSPACE_DIR,
} from "./pod-containers.js";
import { defaultStep } from "./step-request.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";

/** Where the projected IRSA token is mounted; the path the EKS webhook uses, so AWS SDKs find it unchanged. */
export const IRSA_TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
export { WORKSPACE_DIR };
export { JOB_UID };

/**
 * Builds the one pod that runs `job` with the settings of `queue` and what its step may have (`step`, the queue's
 * decision), in containers with one role each (docs/pod-layout.md). Pure: same inputs, same pod. `slot` and the job's
 * pipeline (and branch, for Branch-scoped caches) select the cache claims the pod mounts.
 */
export function buildPod(queue: BuildkiteQueue, job: BuildkiteJob, slot = 0, step = defaultStep(queue)): V1Pod {
  const { spec } = queue;
  const shape = shapeResources(spec.instanceShape);
  const name = job.metadata.name ?? "";
  const template = spec.podTemplate ?? {};
  const jobToken = job.metadata.annotations?.[ANNOTATIONS.agentTokenSecret];
  // The job's own acquisition token when it has one (it can acquire this job only), else the queue's agent token.
  const token =
    jobToken !== undefined
      ? { name: jobToken, key: "token" }
      : { name: spec.agentTokenSecretRef.name, key: spec.agentTokenSecretRef.key };
  const clients = step.skipCheckout ? 1 : 2;
  const command = commandContainer(queue, step, clients - 1, commandExtras(queue, job));

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
      // Each container sees only its own processes: job code cannot read the agent's memory.
      shareProcessNamespace: false,
      nodeSelector: { ...template.nodeSelector, "kubernetes.io/arch": shape.arch, "kubernetes.io/os": "linux" },
      activeDeadlineSeconds: spec.maxJobDurationSeconds,
      terminationGracePeriodSeconds: 60,
      // The pod as a whole is exactly the shape; its containers share it (docs/pod-layout.md, "Resources").
      resources: {
        requests: { cpu: String(shape.vcpu), memory: shape.memory },
        limits: { cpu: String(shape.vcpu), memory: shape.memory },
      },
      securityContext: {
        runAsNonRoot: true,
        runAsUser: JOB_UID,
        runAsGroup: JOB_UID,
        fsGroup: JOB_UID,
        seccompProfile: { type: "RuntimeDefault" },
      },
      initContainers: [
        copyAgentContainer(queue),
        ...(step.image !== spec.agentImage ? [imageCheckContainer(queue, step.image)] : []),
        ...step.sidecars.map((s) => sidecarContainer(queue, s)),
      ],
      containers: [
        agentContainer(queue, job, clients, token),
        ...(step.skipCheckout ? [] : [checkoutContainer(queue)]),
        command,
      ],
      volumes: podVolumes(queue, job, slot, shape.disk),
      ...(template.affinity ? { affinity: template.affinity } : {}),
      ...(template.topologySpreadConstraints
        ? { topologySpreadConstraints: template.topologySpreadConstraints as unknown as V1TopologySpreadConstraint[] }
        : {}),
      ...(template.tolerations ? { tolerations: template.tolerations } : {}),
      ...(template.runtimeClassName ? { runtimeClassName: template.runtimeClassName } : {}),
      ...(template.priorityClassName ? { priorityClassName: template.priorityClassName } : {}),
      ...(template.imagePullSecrets ? { imagePullSecrets: template.imagePullSecrets } : {}),
    },
  };
  (pod.metadata ??= {}).annotations = { ...pod.metadata.annotations, [ANNOTATIONS.specHash]: specHash(pod) };
  return pod;
}

/** The command container's AWS role (IRSA) and caches: the agent and checkout never get them. */
function commandExtras(queue: BuildkiteQueue, job: BuildkiteJob): { env: V1EnvVar[]; mounts: V1VolumeMount[] } {
  const { spec } = queue;
  const env: V1EnvVar[] = [];
  const mounts: V1VolumeMount[] = [];
  if (spec.aws) {
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
  for (const cache of spec.cache ?? []) mounts.push({ name: `cache-${cache.name}`, mountPath: cache.mountPath });
  return { env, mounts };
}

/** A volume holding one key of a Secret as the file `path`. */
function secretFile(name: string, ref: { name: string; key: string }, path: string, defaultMode: number): V1Volume {
  return { name, secret: { secretName: ref.name, items: [{ key: ref.key, path }], defaultMode } };
}

/** The pod's volumes (docs/pod-layout.md, "Volumes"). */
function podVolumes(queue: BuildkiteQueue, job: BuildkiteJob, slot: number, disk: string): V1Volume[] {
  const { spec } = queue;
  const template = spec.podTemplate ?? {};
  const { checkout } = spec;
  const volumes: V1Volume[] = [
    { name: "workspace", emptyDir: { sizeLimit: disk } },
    { name: "buildkite-bin", emptyDir: { sizeLimit: "256Mi" } },
  ];
  if (template.hooksConfigMap)
    volumes.push({ name: "hooks", configMap: { name: template.hooksConfigMap, defaultMode: 0o555 } });
  if (checkout.sshKeySecretRef) volumes.push(secretFile("git-ssh", checkout.sshKeySecretRef, "id", 0o440));
  if (checkout.knownHostsSecretRef)
    volumes.push(secretFile("git-known-hosts", checkout.knownHostsSecretRef, "known_hosts", 0o444));
  if (checkout.httpsCredentialsSecretRef)
    volumes.push(secretFile("git-https", checkout.httpsCredentialsSecretRef, "git-credentials", 0o440));
  if (spec.aws)
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
  for (const cache of spec.cache ?? [])
    // The claim of the job's own scope (pipeline, or pipeline and branch): another pipeline's cache is never mounted.
    volumes.push({
      name: `cache-${cache.name}`,
      persistentVolumeClaim: { claimName: cacheClaimName(queue, cache.name, cacheScope(queue, cache, job), slot) },
    });
  for (const v of template.volumes ?? [])
    volumes.push({
      name: `v-${v.name}`,
      ...(v.secret
        ? { secret: { secretName: v.secret.secretName } }
        : { configMap: { name: v.configMap?.name ?? "" } }),
    });
  return volumes;
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
