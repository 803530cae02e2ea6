import type {
  CoreV1Api,
  V1Container,
  V1ContainerState,
  V1ContainerStatus,
  V1EnvVar,
  V1Pod,
  V1PodStatus,
} from "@kubernetes/client-node";
import { isNotFound } from "../../operator/src/kube/field-manager.js";

/**
 * What a kubelet derives from a pod spec, for the test stand-ins that play kubelet (the pod-runner and the fast
 * runner): the container's resolved env, and the container statuses and conditions it reports.
 */

/** The pod and host IP the stand-ins report: the agent runs on this machine. */
export const LOCAL_IP = "127.0.0.1";

/** Kubernetes' `$(VAR)` expansion: variables defined so far are replaced, `$$` escapes, anything else stays. */
export function expand(text: string, vars: ReadonlyMap<string, string>): string {
  return text.replace(/\$\$|\$\(([^)]*)\)/g, (match, name?: string) =>
    match === "$$" ? "$" : (vars.get(name ?? "") ?? match),
  );
}

/** The container's env as the kubelet resolves it, in order: values (expanded), Secret keys, downward API fields. */
export async function resolveEnv(core: CoreV1Api, pod: V1Pod, container: V1Container): Promise<Map<string, string>> {
  if (container.envFrom?.length) throw new Error("envFrom is not supported by the pod runner");
  const vars = new Map<string, string>();
  for (const env of container.env ?? []) {
    const value = env.valueFrom ? await valueFrom(core, pod, env) : expand(env.value ?? "", vars);
    if (value !== undefined) vars.set(env.name, value);
  }
  return vars;
}

async function valueFrom(core: CoreV1Api, pod: V1Pod, env: V1EnvVar): Promise<string | undefined> {
  const { fieldRef, secretKeyRef: ref } = env.valueFrom ?? {};
  if (fieldRef) return fieldValue(pod, fieldRef.fieldPath);
  if (!ref) throw new Error(`env ${env.name}: only value, fieldRef and secretKeyRef are supported by the pod runner`);
  const secret = `Secret ${pod.metadata?.namespace ?? ""}/${ref.name ?? ""}`;
  let data: string | undefined;
  try {
    data = (await core.readNamespacedSecret({ name: ref.name ?? "", namespace: pod.metadata?.namespace ?? "" })).data?.[
      ref.key
    ];
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  if (data === undefined && ref.optional !== true)
    throw new Error(`env ${env.name}: ${secret} or its key ${ref.key} does not exist`);
  return data === undefined ? undefined : Buffer.from(data, "base64").toString("utf8");
}

/** The downward API's `fieldRef` paths for env. */
function fieldValue(pod: V1Pod, path: string): string {
  const meta = pod.metadata ?? {};
  const keyed = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
  if (keyed) return (keyed[1] === "labels" ? meta.labels : meta.annotations)?.[keyed[2] ?? ""] ?? "";
  const fields: Record<string, string | undefined> = {
    "metadata.name": meta.name,
    "metadata.namespace": meta.namespace,
    "metadata.uid": meta.uid,
    "spec.nodeName": pod.spec?.nodeName,
    "spec.serviceAccountName": pod.spec?.serviceAccountName,
    "status.podIP": LOCAL_IP,
    "status.hostIP": LOCAL_IP,
  };
  if (!(path in fields)) throw new Error(`fieldRef ${path} is not supported by the pod runner`);
  return fields[path] ?? "";
}

export function containerStatus(container: V1Container, state: V1ContainerState, ready = false): V1ContainerStatus {
  return {
    name: container.name,
    image: container.image ?? "",
    imageID: "",
    ready,
    started: ready,
    restartCount: 0,
    state,
  };
}

/** Sets the pod's conditions; one keeps its lastTransitionTime while its status stays. */
export function setConditions(status: V1PodStatus, next: [string, "True" | "False", string?][]): void {
  const byType = new Map((status.conditions ?? []).map((c) => [c.type, c]));
  for (const [type, value, reason] of next) {
    const prev = byType.get(type);
    const lastTransitionTime = prev?.status === value ? (prev.lastTransitionTime ?? new Date()) : new Date();
    byType.set(type, { type, status: value, ...(reason === undefined ? {} : { reason }), lastTransitionTime });
  }
  status.conditions = [...byType.values()];
}

/** What the status of one run of a container is written from. */
export interface ContainerRun {
  readonly startedAt: Date;
  readonly finishedAt: Date | undefined;
  readonly exitCode: number | undefined;
  readonly reason: string | undefined;
  readonly deadlineExceeded: boolean;
}

export function setRunning(status: V1PodStatus, container: V1Container, run: ContainerRun): void {
  Object.assign(status, {
    phase: "Running",
    hostIP: LOCAL_IP,
    hostIPs: [{ ip: LOCAL_IP }],
    podIP: LOCAL_IP,
    podIPs: [{ ip: LOCAL_IP }],
    startTime: run.startedAt,
  });
  setConditions(status, [
    ["PodReadyToStartContainers", "True"],
    ["PodScheduled", "True"],
    ["Initialized", "True"],
    ["ContainersReady", "True"],
    ["Ready", "True"],
  ]);
  status.containerStatuses = [containerStatus(container, { running: { startedAt: run.startedAt } }, true)];
}

export function setTerminated(status: V1PodStatus, container: V1Container, run: ContainerRun): void {
  const exitCode = run.exitCode ?? 128;
  status.phase = exitCode === 0 && !run.deadlineExceeded ? "Succeeded" : "Failed";
  if (run.deadlineExceeded)
    Object.assign(status, {
      reason: "DeadlineExceeded",
      message: "Pod was active on the node longer than the specified deadline",
    });
  setConditions(status, [
    ["ContainersReady", "False", "PodCompleted"],
    ["Ready", "False", "PodCompleted"],
  ]);
  const terminated = {
    exitCode,
    reason: run.reason ?? "Error",
    startedAt: run.startedAt,
    finishedAt: run.finishedAt ?? new Date(),
  };
  status.containerStatuses = [containerStatus(container, { terminated })];
}

/** Bound to a node, not deleting, not finished: a kubelet would run it. */
export function runnable(pod: V1Pod): boolean {
  const phase = pod.status?.phase;
  return (
    pod.spec?.nodeName !== undefined &&
    pod.metadata?.deletionTimestamp === undefined &&
    phase !== "Succeeded" &&
    phase !== "Failed"
  );
}

/** The job uuid of an agent container started with `--acquire-job`. */
export function acquiredJob(container: V1Container): string | undefined {
  const args = container.args ?? [];
  const i = args.indexOf("--acquire-job");
  return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith("--acquire-job="))?.slice("--acquire-job=".length);
}
