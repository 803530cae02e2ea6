import type { V1Container, V1EnvFromSource, V1EnvVar, V1SecurityContext, V1VolumeMount } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { cpuMillis, memoryBytes } from "../api/quantity.js";
import { proxyEnv } from "../queue/children.js";
import { commandResources, requestsOnly, ROLE_REQUESTS, sum, type Requests } from "./pod-resources.js";
import type { StepPlan } from "./step-request.js";

/** Paths of the job pod (docs/pod-layout.md). */
export const WORKSPACE_DIR = "/workspace";
export const BIN_DIR = "/buildkite/bin";
export const HOOKS_DIR = "/buildkite/hooks";
export const GIT_SSH_DIR = "/buildkite/git/ssh";
export const GIT_KNOWN_HOSTS_DIR = "/buildkite/git/known-hosts";
export const GIT_HTTPS_DIR = "/buildkite/git/https";
const AGENT_IN_POD = `${BIN_DIR}/buildkite-agent`;
/** The non-root identity job pods run as (Pod Security restricted forbids root). */
export const JOB_UID = 1000;

/** Every container of a job pod: no root, no privilege escalation, no capabilities (Pod Security restricted). */
export const RESTRICTED: V1SecurityContext = {
  allowPrivilegeEscalation: false,
  capabilities: { drop: ["ALL"] },
  runAsNonRoot: true,
};

const pullPolicy = (queue: BuildkiteQueue): Partial<V1Container> =>
  queue.spec.podTemplate?.imagePullPolicy ? { imagePullPolicy: queue.spec.podTemplate.imagePullPolicy } : {};

/** Copies the agent image's static buildkite-agent into the pod, so any command image can run the bootstrap. */
export function copyAgentContainer(queue: BuildkiteQueue): V1Container {
  return {
    name: "copy-agent",
    image: queue.spec.agentImage,
    ...pullPolicy(queue),
    // Also a passwd with the pod's user, for the checkout container (same image): ssh refuses a uid without an entry.
    command: [
      "/bin/sh",
      "-ec",
      `cp "$(command -v buildkite-agent)" ${AGENT_IN_POD}
{ grep -v '^[^:]*:[^:]*:${String(JOB_UID)}:' /etc/passwd 2>/dev/null || true; echo 'buildkite:x:${String(JOB_UID)}:${String(JOB_UID)}:buildkite:${WORKSPACE_DIR}:/bin/sh'; } >${BIN_DIR}/passwd`,
    ],
    resources: requestsOnly(ROLE_REQUESTS.copyAgent),
    securityContext: RESTRICTED,
    volumeMounts: [{ name: "buildkite-bin", mountPath: BIN_DIR }],
  };
}

/**
 * Pulls the command's image and runs the copied agent in it (`--version`) before the agent starts: an image that
 * cannot be pulled holds the pod in its init phase, where the job is failed and Buildkite told why, instead of the
 * agent taking the job and waiting minutes for a container that never comes.
 */
export function imageCheckContainer(queue: BuildkiteQueue, image: string): V1Container {
  return {
    name: "image-check",
    image,
    ...pullPolicy(queue),
    command: [AGENT_IN_POD, "--version"],
    resources: requestsOnly(ROLE_REQUESTS.copyAgent),
    securityContext: RESTRICTED,
    volumeMounts: [{ name: "buildkite-bin", mountPath: BIN_DIR, readOnly: true }],
  };
}

/**
 * The agent: the only container with a Buildkite token, which acquires the job and drives the others over the
 * workspace's socket. Its whole environment is handed to the other containers at registration (the agent removes
 * its token first), so nothing but the agent's own settings goes here.
 */
export function agentContainer(
  queue: BuildkiteQueue,
  job: BuildkiteJob,
  clients: number,
  token: { name: string; key: string },
): V1Container {
  const { spec } = queue;
  const env: V1EnvVar[] = [
    { name: "BUILDKITE_AGENT_TOKEN", valueFrom: { secretKeyRef: token } },
    { name: "BUILDKITE_AGENT_ACQUIRE_JOB", value: job.spec.uuid },
    { name: "BUILDKITE_KUBERNETES_EXEC", value: "true" },
    { name: "BUILDKITE_CONTAINER_COUNT", value: String(clients) },
    { name: "BUILDKITE_AGENT_ENDPOINT", value: spec.endpoint },
    { name: "BUILDKITE_AGENT_TAGS", value: `queue=${spec.queue}` },
    { name: "BUILDKITE_AGENT_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
    { name: "BUILDKITE_BUILD_PATH", value: `${WORKSPACE_DIR}/build` },
    { name: "BUILDKITE_PLUGINS_PATH", value: `${WORKSPACE_DIR}/plugins` },
    { name: "BUILDKITE_JOB_CONTEXT_DIR", value: WORKSPACE_DIR },
    // Step images need not have bash; a step that wants it sets BUILDKITE_SHELL in its env.
    { name: "BUILDKITE_SHELL", value: "/bin/sh -ec" },
    { name: "HOME", value: WORKSPACE_DIR },
    ...(spec.podTemplate?.hooksConfigMap ? [{ name: "BUILDKITE_HOOKS_PATH", value: HOOKS_DIR }] : []),
    // Host keys come from the queue's known_hosts only: no trust on first use.
    ...(spec.checkout.knownHostsSecretRef ? [{ name: "BUILDKITE_NO_SSH_KEYSCAN", value: "true" }] : []),
  ];
  return {
    name: "agent",
    image: spec.agentImage,
    ...pullPolicy(queue),
    command: ["buildkite-agent"],
    // --reflect-exit-status: the container exits with the job's exit status, so the pod (and kubectl) shows it.
    args: ["start", "--reflect-exit-status"],
    env,
    resources: requestsOnly(ROLE_REQUESTS.agent),
    securityContext: RESTRICTED,
    volumeMounts: [{ name: "workspace", mountPath: WORKSPACE_DIR }],
    workingDir: WORKSPACE_DIR,
    // The agent takes SIGTERM as "finish the current job first", so a pod stopped for its deadline (or deleted by a
    // person) would keep running the job until SIGKILL and leave Buildkite to notice a lost agent minutes later.
    // SIGQUIT is the agent's ungraceful stop: it cancels the job and reports it at once.
    lifecycle: { preStop: { exec: { command: ["/bin/sh", "-c", "kill -QUIT 1"] } } },
  };
}

/** What `kubernetes-bootstrap` needs in a client container: its place in the run and where the socket is. */
function bootstrapEnv(name: string, id: number, phases: string): V1EnvVar[] {
  return [
    { name: "BUILDKITE_CONTAINER_ID", value: String(id) },
    { name: "BUILDKITE_BOOTSTRAP_PHASES", value: phases },
    { name: "BUILDKITE_JOB_CONTEXT_DIR", value: WORKSPACE_DIR },
    { name: "BUILDKITE_SOCKETS_PATH", value: `${WORKSPACE_DIR}/sockets/${name}` },
    { name: "HOME", value: WORKSPACE_DIR },
  ];
}

const binMounts = (queue: BuildkiteQueue): V1VolumeMount[] => [
  { name: "workspace", mountPath: WORKSPACE_DIR },
  { name: "buildkite-bin", mountPath: BIN_DIR, readOnly: true },
  ...(queue.spec.podTemplate?.hooksConfigMap ? [{ name: "hooks", mountPath: HOOKS_DIR, readOnly: true }] : []),
];

/** Clones the repository with the queue's git credentials, which no other container mounts. */
export function checkoutContainer(queue: BuildkiteQueue): V1Container {
  const { checkout } = queue.spec;
  const env = bootstrapEnv("checkout", 0, "plugin,checkout");
  const mounts = binMounts(queue);
  if (checkout.sshKeySecretRef) {
    mounts.push(
      { name: "git-ssh", mountPath: GIT_SSH_DIR, readOnly: true },
      { name: "git-known-hosts", mountPath: GIT_KNOWN_HOSTS_DIR, readOnly: true },
    );
    env.push({
      name: "GIT_SSH_COMMAND",
      value: `ssh -i ${GIT_SSH_DIR}/id -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=${GIT_KNOWN_HOSTS_DIR}/known_hosts`,
    });
  }
  if (checkout.httpsCredentialsSecretRef) {
    mounts.push({ name: "git-https", mountPath: GIT_HTTPS_DIR, readOnly: true });
    // Answers git's `get` from the store file; `store` and `erase` would try to write to the read-only mount.
    env.push(
      { name: "GIT_CONFIG_COUNT", value: "1" },
      { name: "GIT_CONFIG_KEY_0", value: "credential.helper" },
      {
        name: "GIT_CONFIG_VALUE_0",
        value: `!f() { test "$1" = get && git credential-store --file=${GIT_HTTPS_DIR}/git-credentials get; }; f`,
      },
    );
  }
  // The pod's user by name (copy-agent wrote the entry): ssh and git look the user up.
  mounts.push({ name: "buildkite-bin", mountPath: "/etc/passwd", subPath: "passwd", readOnly: true });
  env.push(...proxyEnv(queue));
  return {
    name: "checkout",
    image: queue.spec.agentImage,
    ...pullPolicy(queue),
    command: [AGENT_IN_POD, "kubernetes-bootstrap"],
    env,
    resources: requestsOnly(ROLE_REQUESTS.checkout),
    securityContext: RESTRICTED,
    volumeMounts: mounts,
    workingDir: WORKSPACE_DIR,
  };
}

/** Runs the step's command in the step's image, with the queue's and the step's env, AWS role, caches and volumes. */
export function commandContainer(
  queue: BuildkiteQueue,
  step: StepPlan,
  id: number,
  extra: { env: V1EnvVar[]; mounts: V1VolumeMount[] },
): V1Container {
  const template = queue.spec.podTemplate ?? {};
  const others = sum(
    ROLE_REQUESTS.agent,
    step.skipCheckout ? { cpu: 0, memory: 0 } : ROLE_REQUESTS.checkout,
    ...step.sidecars.map(sidecarRequests),
  );
  const envFrom: V1EnvFromSource[] = [...(template.envFrom ?? []), ...step.envFrom];
  return {
    name: "command",
    image: step.image,
    ...pullPolicy(queue),
    command: [AGENT_IN_POD, "kubernetes-bootstrap"],
    env: [
      ...bootstrapEnv("command", id, "plugin,command"),
      // kubernetes-bootstrap takes the command from its own container only, never from the agent.
      ...(step.command !== undefined ? [{ name: "BUILDKITE_COMMAND", value: step.command }] : []),
      ...extra.env,
      ...proxyEnv(queue),
      ...(template.env ?? []).map((e) =>
        e.valueFrom ? { name: e.name, valueFrom: e.valueFrom } : { name: e.name, value: e.value ?? "" },
      ),
      ...step.env,
    ],
    ...(envFrom.length > 0 ? { envFrom } : {}),
    resources: commandResources(queue.spec.instanceShape, others, step.resources),
    securityContext: RESTRICTED,
    volumeMounts: [
      ...binMounts(queue),
      ...extra.mounts,
      ...(template.volumes ?? []).map((v) => ({ name: `v-${v.name}`, mountPath: v.mountPath, readOnly: true })),
    ],
    workingDir: WORKSPACE_DIR,
  };
}

/** A step's service, as a native sidecar: started before the job's containers, stopped after them. */
export function sidecarContainer(queue: BuildkiteQueue, sidecar: V1Container): V1Container {
  return Object.assign(structuredClone(sidecar), pullPolicy(queue), {
    restartPolicy: "Always",
    securityContext: RESTRICTED,
  });
}

function sidecarRequests(c: V1Container): Requests {
  const r = c.resources?.requests ?? {};
  return { cpu: cpuMillis(r.cpu ?? 0) ?? 0, memory: memoryBytes(r.memory ?? 0) ?? 0 };
}
