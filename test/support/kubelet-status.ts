import type {
  V1Container,
  V1ContainerState,
  V1ContainerStatus,
  V1Pod,
  V1PodCondition,
  V1PodStatus,
} from "@kubernetes/client-node";
import { isSidecar, LOCAL_IP } from "./kubelet-env.js";

/**
 * The pod status a kubelet writes, derived from what the stand-in knows of each container: pure, so the pod runner
 * and the fast runner report the same shapes, and a test can check them without a cluster.
 */

/** What is known of one container of the pod. */
export interface ContainerFacts {
  readonly name: string;
  /** When its process started; undefined while it waits. */
  readonly startedAt?: Date | undefined;
  readonly finishedAt?: Date | undefined;
  /** Set once it has exited. */
  readonly exitCode?: number | undefined;
  /** The termination reason (Completed, Error, StartError); default from the exit code. */
  readonly reason?: string | undefined;
  /** Why it waits, if not for the init containers before it (CreateContainerConfigError, ContainerCreating). */
  readonly waiting?: { readonly reason: string; readonly message?: string } | undefined;
}

/** One moment of a pod's life on the node. */
export interface PodFacts {
  /** When the kubelet started the pod (status.startTime); undefined before. */
  readonly startedAt: Date | undefined;
  /** Facts by container name; a container not listed has not started. */
  readonly containers: ReadonlyMap<string, ContainerFacts>;
  /** Every container has stopped for good: the phase is terminal. */
  readonly ended: boolean;
  readonly deadlineExceeded?: boolean;
  /** status.message (when the deadline was not exceeded). */
  readonly message?: string | undefined;
}

/** The status the kubelet would write for `pod` given `facts`, keeping each condition's lastTransitionTime. */
export function podStatus(pod: V1Pod, facts: PodFacts): V1PodStatus {
  const inits = pod.spec?.initContainers ?? [];
  const regular = pod.spec?.containers ?? [];
  const fact = (c: V1Container): ContainerFacts | undefined => facts.containers.get(c.name);
  const running = (c: V1Container): boolean => fact(c)?.startedAt !== undefined && fact(c)?.exitCode === undefined;
  const initialized = inits.every((c) => (isSidecar(c) ? fact(c)?.startedAt !== undefined : fact(c)?.exitCode === 0));
  const started = regular.some((c) => fact(c)?.startedAt !== undefined);
  const ready = !facts.ended && regular.every(running) && inits.filter(isSidecar).every(running);
  const succeeded = !facts.deadlineExceeded && regular.every((c) => fact(c)?.exitCode === 0);
  const phase = facts.ended ? (succeeded ? "Succeeded" : "Failed") : initialized && started ? "Running" : "Pending";
  // Before the init containers are done, the others wait for them; without init containers, for their creation.
  const pendingReason = initialized ? "ContainerCreating" : "PodInitializing";
  const notReady = facts.ended ? "PodCompleted" : "ContainersNotReady";
  const status: V1PodStatus = {
    phase,
    conditions: [
      condition(pod, "PodReadyToStartContainers", "True"),
      condition(pod, "PodScheduled", "True"),
      condition(
        pod,
        "Initialized",
        initialized ? "True" : "False",
        initialized ? undefined : "ContainersNotInitialized",
      ),
      condition(pod, "ContainersReady", ready ? "True" : "False", ready ? undefined : notReady),
      condition(pod, "Ready", ready ? "True" : "False", ready ? undefined : notReady),
    ],
    containerStatuses: regular.map((c) => containerStatus(c, fact(c), pendingReason, false)),
  };
  if (inits.length > 0)
    status.initContainerStatuses = inits.map((c) => containerStatus(c, fact(c), "PodInitializing", true));
  if (facts.startedAt !== undefined)
    Object.assign(status, {
      hostIP: LOCAL_IP,
      hostIPs: [{ ip: LOCAL_IP }],
      podIP: LOCAL_IP,
      podIPs: [{ ip: LOCAL_IP }],
      startTime: facts.startedAt,
    });
  if (facts.ended && facts.deadlineExceeded)
    Object.assign(status, {
      reason: "DeadlineExceeded",
      message: "Pod was active on the node longer than the specified deadline",
    });
  else if (facts.message !== undefined) status.message = facts.message;
  return status;
}

/**
 * One container's status. Running containers are ready and started (no probes here); an init container that
 * completed is ready, as the kubelet reports it.
 */
export function containerStatus(
  container: V1Container,
  fact: ContainerFacts | undefined,
  pendingReason: string,
  init: boolean,
): V1ContainerStatus {
  let state: V1ContainerState;
  let ready = false;
  if (fact?.startedAt === undefined) state = { waiting: fact?.waiting ?? { reason: pendingReason } };
  else if (fact.exitCode === undefined) {
    state = { running: { startedAt: fact.startedAt } };
    ready = true;
  } else {
    const terminated = {
      exitCode: fact.exitCode,
      reason: fact.reason ?? (fact.exitCode === 0 ? "Completed" : "Error"),
      startedAt: fact.startedAt,
      finishedAt: fact.finishedAt ?? fact.startedAt,
    };
    state = { terminated };
    ready = init && !isSidecar(container) && fact.exitCode === 0;
  }
  return {
    name: container.name,
    image: container.image ?? "",
    imageID: "",
    ready,
    started: state.running !== undefined,
    restartCount: 0,
    state,
  };
}

/** A condition that keeps its lastTransitionTime while its status stays. */
function condition(pod: V1Pod, type: string, status: "True" | "False", reason?: string): V1PodCondition {
  const prev = pod.status?.conditions?.find((c) => c.type === type);
  const lastTransitionTime = prev?.status === status ? (prev.lastTransitionTime ?? new Date()) : new Date();
  return { type, status, lastTransitionTime, ...(reason === undefined ? {} : { reason }) };
}
