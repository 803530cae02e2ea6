import type { V1Container, V1EnvVar, V1Pod } from "@kubernetes/client-node";
import { expand, isSidecar } from "./kubelet-env.js";
import { podStatus, type ContainerFacts, type PodFacts } from "./kubelet-status.js";
import { RUNNER_ANNOTATION } from "./pod-runner.js";

/**
 * The pure half of {@link FastRunner}: which pods it takes, what their agent container asks for, what the agent's
 * exit code is, and the pod status a kubelet would write. No I/O here; Secrets are read through a callback.
 */

/** The annotation value that hands a pod to the fast runner (KWOK's stages skip any pod with the key). */
export const FAST_RUNNER = "fast";

/**
 * Whether the runner should take `pod` now. Annotated `fast`: once bound. With `adoptAll`, an unannotated pod too,
 * once KWOK has made it Running; never one whose restartPolicy is Always (a Deployment's or DaemonSet's pod: a real
 * kubelet never lets its containers end, so marking it Succeeded would be a lie the controller fights).
 */
export function takes(pod: V1Pod, adoptAll: boolean): boolean {
  const phase = pod.status?.phase;
  if (pod.spec?.nodeName === undefined || pod.metadata?.deletionTimestamp !== undefined) return false;
  if (phase === "Succeeded" || phase === "Failed") return false;
  const runner = pod.metadata?.annotations?.[RUNNER_ANNOTATION];
  if (runner === FAST_RUNNER) return true;
  return adoptAll && runner === undefined && phase === "Running" && (pod.spec.restartPolicy ?? "Always") !== "Always";
}

/** Whether the runner itself must write Running (KWOK skips annotated pods) or only the terminal status. */
export const ownsStart = (pod: V1Pod): boolean => pod.metadata?.annotations?.[RUNNER_ANNOTATION] === FAST_RUNNER;

/** What the pod's agent would start with, its env resolved as the kubelet resolves it. */
export interface AgentLaunch {
  /** The container running `buildkite-agent start`; undefined if the pod has none (no job to take). */
  readonly container: string | undefined;
  readonly uuid: string | undefined;
  readonly token: string | undefined;
  readonly endpoint: string;
  readonly tags: string[];
  readonly name: string;
  /** `--reflect-exit-status`: the container exits with the job's status rather than 0. */
  readonly reflect: boolean;
}

/**
 * Reads one key of a Secret in the pod's namespace; undefined if the Secret or key does not exist. `optional` is the
 * reference's: the container starts without an optional Secret that does not exist, and waits for any other.
 */
export type SecretReader = (name: string, key: string, optional: boolean) => Promise<string | undefined>;

/** Raised when the kubelet could not start the container either (CreateContainerConfigError): retried later. */
export class PodConfigError extends Error {
  override name = "PodConfigError";
}

const WANTED = [
  "BUILDKITE_AGENT_TOKEN",
  "BUILDKITE_AGENT_ENDPOINT",
  "BUILDKITE_AGENT_TAGS",
  "BUILDKITE_AGENT_ACQUIRE_JOB",
  "BUILDKITE_AGENT_NAME",
  "BUILDKITE_AGENT_REFLECT_EXIT_STATUS",
];

/**
 * Finds the agent container among the regular containers (init containers and sidecars never acquire), the first
 * with `--acquire-job <uuid>` (this operator's pod of one container) or the env `BUILDKITE_AGENT_ACQUIRE_JOB` (the
 * role layout's `agent`, agent-stack-k8s's), and resolves the env the agent reads.
 */
export async function agentLaunch(pod: V1Pod, defaultEndpoint: string, readSecret: SecretReader): Promise<AgentLaunch> {
  const containers = pod.spec?.containers ?? [];
  const podName = pod.metadata?.name ?? "";
  const none: AgentLaunch = {
    container: undefined,
    uuid: undefined,
    token: undefined,
    endpoint: defaultEndpoint,
    tags: [],
    name: podName,
    reflect: false,
  };
  const container = containers.find(
    (c) =>
      flag(c.args ?? [], "--acquire-job") !== undefined || c.env?.some((e) => e.name === "BUILDKITE_AGENT_ACQUIRE_JOB"),
  );
  if (!container) return none;
  const vars = await resolveEnv(pod, container, readSecret);
  const args = (container.args ?? []).map((a) => expand(a, vars));
  const uuid = flag(args, "--acquire-job") ?? vars.get("BUILDKITE_AGENT_ACQUIRE_JOB");
  const tags = (flag(args, "--tags") ?? vars.get("BUILDKITE_AGENT_TAGS") ?? "")
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t !== "");
  return {
    container: container.name,
    uuid: uuid === "" ? undefined : uuid,
    token: flag(args, "--token") ?? vars.get("BUILDKITE_AGENT_TOKEN"),
    endpoint: flag(args, "--endpoint") ?? vars.get("BUILDKITE_AGENT_ENDPOINT") ?? defaultEndpoint,
    tags,
    name: vars.get("BUILDKITE_AGENT_NAME") ?? podName,
    reflect: args.includes("--reflect-exit-status") || vars.get("BUILDKITE_AGENT_REFLECT_EXIT_STATUS") === "true",
  };
}

/** `--name value` or `--name=value`. */
function flag(args: readonly string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i >= 0) return args[i + 1];
  return args.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1);
}

/** The container's env in order; only the agent's variables are resolved, so other Secrets are never read. */
async function resolveEnv(pod: V1Pod, container: V1Container, readSecret: SecretReader): Promise<Map<string, string>> {
  const vars = new Map<string, string>();
  for (const env of container.env ?? []) {
    if (env.valueFrom === undefined) vars.set(env.name, expand(env.value ?? "", vars));
    else if (WANTED.includes(env.name)) {
      const value = await valueFrom(pod, env, readSecret);
      if (value !== undefined) vars.set(env.name, value);
    }
  }
  return vars;
}

async function valueFrom(pod: V1Pod, env: V1EnvVar, readSecret: SecretReader): Promise<string | undefined> {
  const { fieldRef, secretKeyRef: ref } = env.valueFrom ?? {};
  if (fieldRef) {
    const meta = pod.metadata ?? {};
    const fields: Record<string, string | undefined> = {
      "metadata.name": meta.name,
      "metadata.namespace": meta.namespace,
      "metadata.uid": meta.uid,
      "spec.nodeName": pod.spec?.nodeName,
    };
    return fields[fieldRef.fieldPath];
  }
  if (!ref) throw new PodConfigError(`env ${env.name}: only value, fieldRef and secretKeyRef are supported`);
  const value = await readSecret(ref.name ?? "", ref.key, ref.optional === true);
  if (value === undefined && ref.optional !== true)
    throw new PodConfigError(`env ${env.name}: Secret ${ref.name ?? ""} or its key ${ref.key} does not exist`);
  return value;
}

/** How the agent's attempt at the job ended, before it is mapped to an exit code. */
export type AgentOutcome =
  | { kind: "ran"; jobExit: number }
  | { kind: "register-refused" }
  | { kind: "acquire-rejected" }
  | { kind: "acquire-refused" }
  | { kind: "locked" }
  | { kind: "errored" }
  | { kind: "no-job" };

/**
 * The agent process's exit code (buildkite-agent 3.138.1, checked against the fake): 27 for a 422 on acquire, 1 for
 * a refused register (bad token), 0 for other acquire refusals (404 wrong queue or unknown job, 401, 403): the
 * agent logs them and exits cleanly. 28 for a job still locked when retries run out is the agent's documented
 * intent (§2.3 step 12), not observed. A job that ran gives 0, or its status with --reflect-exit-status (−1, a
 * signalled job, becomes 255).
 */
export function agentExitCode(outcome: AgentOutcome, reflect: boolean): number {
  switch (outcome.kind) {
    case "ran":
      return reflect ? outcome.jobExit & 0xff : 0;
    case "register-refused":
    case "errored":
      return 1;
    case "acquire-rejected":
      return 27;
    case "locked":
      return 28;
    case "acquire-refused":
    case "no-job":
      return 0;
  }
}

/** Strategic-merge status patch (by uid: a replacement pod of the same name is never written) for Running. */
export function runningPatch(pod: V1Pod, startedAt: Date): object {
  return { metadata: { uid: pod.metadata?.uid }, status: podStatus(pod, podFacts(pod, startedAt)) };
}

/**
 * The terminal status patch, as the kubelet reports a pod whose containers have all stopped. The agent container
 * exits with `agentExit`. A `kubernetes-bootstrap` container (one with `BUILDKITE_BOOTSTRAP_PHASES`, of the role
 * layout or agent-stack-k8s's) exits with the job's status if its phases include `command`, 0 for `checkout`, and 1
 * if no job ran (it never got to register: the agent and its socket were gone). Any other container exits with the
 * job's status if it ran, else with the agent's. Init containers completed at the start; sidecars stopped cleanly at
 * the end. Phase as the kubelet derives it for restartPolicy Never: Succeeded only if every regular container
 * exited 0. The pod's IPs and startTime are left as they are.
 */
export function terminatedPatch(
  pod: V1Pod,
  agentContainer: string | undefined,
  agentExit: number,
  jobExit: number | undefined,
  startedAt: Date,
  finishedAt: Date,
): object {
  const exit = (c: V1Container): number => {
    if (c.name === agentContainer) return agentExit;
    const phases = c.env?.find((e) => e.name === "BUILDKITE_BOOTSTRAP_PHASES")?.value;
    if (phases === undefined) return jobExit === undefined ? agentExit : jobExit & 0xff;
    if (jobExit === undefined) return 1;
    return phases.split(",").includes("command") ? jobExit & 0xff : 0;
  };
  const { phase, conditions, containerStatuses, initContainerStatuses } = podStatus(
    pod,
    podFacts(pod, startedAt, { finishedAt, exit }),
  );
  return {
    metadata: { uid: pod.metadata?.uid },
    status: { phase, conditions, containerStatuses, ...(initContainerStatuses ? { initContainerStatuses } : {}) },
  };
}

/** Every container as started at `startedAt` (init containers already done), or stopped at `end`. */
function podFacts(pod: V1Pod, startedAt: Date, end?: { finishedAt: Date; exit: (c: V1Container) => number }): PodFacts {
  const containers = new Map<string, ContainerFacts>();
  for (const c of pod.spec?.initContainers ?? []) {
    const stopped = !isSidecar(c)
      ? { finishedAt: startedAt, exitCode: 0 }
      : end && { finishedAt: end.finishedAt, exitCode: 0 };
    containers.set(c.name, { name: c.name, startedAt, ...stopped });
  }
  for (const c of pod.spec?.containers ?? [])
    containers.set(c.name, {
      name: c.name,
      startedAt,
      ...(end && { finishedAt: end.finishedAt, exitCode: end.exit(c) }),
    });
  return { startedAt, containers, ended: end !== undefined };
}
