import type { V1ContainerStateWaiting, V1Pod } from "@kubernetes/client-node";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { shapeResources } from "../api/shapes.js";

/** How long a job's pod may take to start before the job is failed and Buildkite told why. */
export interface StartTimeouts {
  /** A pod not running this long after it was created (unschedulable, stuck initialising) fails (default 600 s). */
  pendingTimeoutSeconds: number;
  /** An image that cannot be pulled, or a container that cannot be configured, fails after this long (default 120 s). */
  startGraceSeconds: number;
}

export const DEFAULT_START_TIMEOUTS: StartTimeouts = { pendingTimeoutSeconds: 600, startGraceSeconds: 120 };

const IMAGE_PULL = new Set([
  "ErrImagePull",
  "ImagePullBackOff",
  "InvalidImageName",
  "ErrImageNeverPull",
  "RegistryUnavailable",
]);
const CONFIG = new Set(["CreateContainerConfigError", "CreateContainerError", "RunContainerError"]);
/** A service (a native sidecar) that exits again and again: the pod never gets past its init phase. */
const CRASH_LOOP = "CrashLoopBackOff";

/** A pod that will not start: why, in words that say what to fix. */
export interface Stuck {
  reason: "ImagePullFailed" | "ContainerConfigError" | "InitContainerFailed" | "Unschedulable" | "PendingTimeout";
  message: string;
}

/**
 * Whether a pod that has not started is stuck past its timeout, and if not yet, when to look again. Pure: the
 * timeouts run from the pod's creation, so a restarted operator judges the same pod the same way.
 */
export function stuckPod(
  pod: V1Pod,
  queue: BuildkiteQueue | undefined,
  timeouts: StartTimeouts,
  now: Date,
): Stuck | { recheckAfterMs: number } {
  const created = Date.parse(String(pod.metadata?.creationTimestamp ?? "")) || now.getTime();
  const age = now.getTime() - created;
  const blocked = blockedContainer(pod);
  const waiting =
    blocked?.waiting ??
    [...(pod.status?.initContainerStatuses ?? []), ...(pod.status?.containerStatuses ?? [])].find(
      (c) => c.state?.waiting,
    )?.state?.waiting;
  const waitingReason = waiting?.reason ?? "";
  const grace = timeouts.startGraceSeconds * 1000;
  if (blocked && IMAGE_PULL.has(waitingReason) && age >= grace) {
    return {
      reason: "ImagePullFailed",
      message: `The image ${blocked.image} of container ${blocked.name} could not be pulled for ${seconds(age)} (${waitingReason}: ${waiting?.message ?? "no message"}). ${imageAdvice(blocked.name)}`,
    };
  }
  if (blocked && CONFIG.has(waitingReason) && age >= grace) {
    return {
      reason: "ContainerConfigError",
      message: `Container ${blocked.name} could not be started for ${seconds(age)} (${waitingReason}: ${waiting?.message ?? "no message"}). Check that the agent token Secret and every Secret, ConfigMap and env value the queue and the step name exist.`,
    };
  }
  if (blocked && waitingReason === CRASH_LOOP && age >= grace) {
    const exit = blocked.lastExit;
    return {
      reason: "InitContainerFailed",
      message: `Container ${blocked.name} (${blocked.image}) keeps exiting${exit === undefined ? "" : ` (exit ${exit})`} before the job could start, so the job was not run. Check the step's sidecar (its image, command and env).`,
    };
  }
  const pending = timeouts.pendingTimeoutSeconds * 1000;
  if (age >= pending) {
    const scheduled = pod.status?.conditions?.find((c) => c.type === "PodScheduled");
    if (!pod.spec?.nodeName && scheduled?.status === "False") {
      const needs = queue ? needsText(queue) : "its requests";
      return {
        reason: "Unschedulable",
        message: `No node could run the pod for ${seconds(age)}: ${scheduled.message ?? scheduled.reason ?? "no reason given"}. The shape needs ${needs}; add such nodes (or free capacity) or choose another instanceShape.`,
      };
    }
    return {
      reason: "PendingTimeout",
      message: `The pod did not start within ${seconds(age)}${waitingReason ? ` (${waitingReason})` : ""}${pod.spec?.nodeName ? ` on node ${pod.spec.nodeName}` : ""}. Check the node and the pod's events.`,
    };
  }
  const nextDeadline =
    IMAGE_PULL.has(waitingReason) || CONFIG.has(waitingReason) || waitingReason === CRASH_LOOP
      ? Math.min(grace, pending)
      : pending;
  return { recheckAfterMs: Math.max(1_000, nextDeadline - age) };
}

/** The first container (init containers first, in order) held back by an image or configuration problem. */
function blockedContainer(
  pod: V1Pod,
): { name: string; image: string; waiting: V1ContainerStateWaiting; lastExit?: number } | undefined {
  const init = pod.status?.initContainerStatuses ?? [];
  for (const c of [...init, ...(pod.status?.containerStatuses ?? [])]) {
    const waiting = c.state?.waiting;
    const reason = waiting?.reason ?? "";
    if (waiting && (IMAGE_PULL.has(reason) || CONFIG.has(reason) || (reason === CRASH_LOOP && init.includes(c))))
      return {
        name: c.name,
        image: c.image,
        waiting,
        ...(c.lastState?.terminated ? { lastExit: c.lastState.terminated.exitCode } : {}),
      };
  }
  return undefined;
}

/** Which setting names the image of a container of the job pod (docs/pod-layout.md). */
function imageAdvice(container: string): string {
  if (["agent", "copy-agent", "checkout"].includes(container))
    return "Check spec.agentImage and spec.podTemplate.imagePullSecrets of the BuildkiteQueue.";
  if (container === "command" || container === "image-check")
    return "Check the step's image: (or the queue's spec.jobImage) and spec.podTemplate.imagePullSecrets.";
  return "Check the image of the step's sidecar and the queue's spec.podTemplate.imagePullSecrets.";
}

function needsText(queue: BuildkiteQueue): string {
  const r = shapeResources(queue.spec.instanceShape);
  return `${r.vcpu} vCPU, ${r.memory} memory and ${r.disk} ephemeral storage on a linux/${r.arch} node`;
}

const seconds = (ms: number): string => `${Math.round(ms / 1000)} s`;
