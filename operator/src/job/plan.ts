import type { V1Pod } from "@kubernetes/client-node";
import { setCondition, type ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteJob, BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { concurrency, shapeResources } from "../api/shapes.js";
import { isTerminal, podOutcome } from "./phase.js";
import type { SlotDecision } from "./slots.js";

/** What the job controller saw for one BuildkiteJob (from the caches, confirmed live where it matters). */
export interface JobObservation {
  job: BuildkiteJob;
  queue: BuildkiteQueue | undefined;
  /** The job's pod; when the cache has none but the job recorded one, the shell confirms with a live read. */
  pod: V1Pod | undefined;
  /** Whether a concurrency slot is free for the job (only consulted when its pod is to be created). */
  slot: SlotDecision;
}

export type JobAction = "createPod" | "deletePod" | "deleteJob";

export interface JobEvent {
  type: "Normal" | "Warning";
  reason: string;
  message: string;
}

/** The decision for one reconcile: the status to write, what to do, and when to look again. */
export interface JobPlan {
  status: BuildkiteJobStatus;
  actions: JobAction[];
  events: JobEvent[];
  requeueAfterMs?: number;
}

const DEFAULT_TTL_SECONDS = 3600;
/** How often a job waiting on its queue looks again, in case no queue change wakes it. */
const QUEUE_WAIT_REQUEUE_MS = 30_000;

const queueReady = (queue: BuildkiteQueue): ConditionUpdate | undefined => {
  const ready = queue.status?.conditions?.find((c) => c.type === "Ready");
  if (ready?.status === "True") return undefined;
  return {
    type: "QueueReady", status: "False", reason: "QueueNotReady",
    message: `BuildkiteQueue ${queue.metadata.name ?? ""} is not ready${ready ? `: ${ready.message}` : " yet"}`,
  };
};

/**
 * Decides what to do with a BuildkiteJob: create its pod, follow the pod's phase, delete the pod as soon as it is
 * terminal, and delete the job `jobTTLSecondsAfterFinished` later. Pure; the controller shell performs the plan.
 */
export function planJob(obs: JobObservation, now: Date): JobPlan {
  const { job, queue, pod, slot } = obs;
  const current = job.status ?? {};
  const gen = job.metadata.generation;
  const events: JobEvent[] = [];

  if (isTerminal(current.phase)) {
    if (pod) return { status: current, actions: ["deletePod"], events };
    const ttl = queue?.spec.jobTTLSecondsAfterFinished ?? DEFAULT_TTL_SECONDS;
    const finished = Date.parse(current.finishedAt ?? "") || now.getTime();
    const remaining = finished + ttl * 1000 - now.getTime();
    return remaining <= 0 ? { status: current, actions: ["deleteJob"], events } : { status: current, actions: [], events, requeueAfterMs: remaining };
  }

  if (pod) {
    const ownerUid = pod.metadata?.ownerReferences?.find((o) => o.controller)?.uid;
    if (ownerUid !== job.metadata.uid) {
      // A pod of the same name from an earlier BuildkiteJob that is still going away: never adopt it.
      return { status: { ...current, phase: "Pending", reason: "WaitingForOldPod", message: `Waiting for an earlier pod named ${pod.metadata?.name ?? ""} to be deleted.` }, actions: [], events, requeueAfterMs: 2_000 };
    }
    const outcome = podOutcome(pod, queue?.spec.maxJobDurationSeconds);
    const terminal = isTerminal(outcome.phase);
    const status: BuildkiteJobStatus = {
      ...current,
      ...outcome,
      podName: pod.metadata?.name ?? "",
      podUID: pod.metadata?.uid ?? "",
      ...(terminal ? { finishedAt: outcome.finishedAt ?? now.toISOString() } : {}),
      ...(gen !== undefined ? { observedGeneration: gen } : {}),
    };
    if (outcome.phase !== current.phase) events.push(phaseEvent(outcome.phase, outcome.reason, outcome.message));
    return { status, actions: terminal ? ["deletePod"] : [], events };
  }

  if (current.podUID) {
    // The job had a pod, and a live read confirmed it is gone before the job ended: fail loudly, never re-run.
    const message = `The pod ${current.podName ?? ""} was deleted before the job finished; the job was not run again. Retry it in Buildkite if needed.`;
    events.push({ type: "Warning", reason: "PodDeleted", message });
    return { status: { ...current, phase: "Failed", reason: "PodDeleted", message, finishedAt: now.toISOString() }, actions: [], events };
  }

  if (!queue) {
    const message = `BuildkiteQueue ${job.spec.queueRef.name} does not exist in namespace ${job.metadata.namespace ?? ""}; create it or delete this job.`;
    return waiting(current, { type: "QueueReady", status: "False", reason: "QueueNotFound", message }, gen, now, current.reason !== "QueueNotFound" ? [{ type: "Warning", reason: "QueueNotFound", message }] : []);
  }
  const notReady = queueReady(queue);
  if (notReady) return waiting(current, notReady, gen, now, current.reason !== "QueueNotReady" ? [{ type: "Warning", reason: "QueueNotReady", message: notReady.message }] : []);

  const conditions = setCondition(current.conditions, { type: "QueueReady", status: "True", reason: "QueueReady", message: "The queue is ready." }, gen, now);
  if ("waiting" in slot) {
    const message = `All ${String(concurrency(queue.spec))} slots of queue ${queue.metadata.name ?? ""} are in use; this job is number ${String(slot.waiting.position)} in line (by priority, then age).`;
    return { status: { ...current, phase: "Pending", shape: queue.spec.instanceShape, reason: "WaitingForSlot", message, conditions }, actions: [], events, requeueAfterMs: QUEUE_WAIT_REQUEUE_MS };
  }
  return {
    status: { ...current, phase: "Pending", shape: queue.spec.instanceShape, slot: slot.slot, reason: "CreatingPod", message: `Creating the pod (${describeShape(queue)}).`, conditions },
    actions: ["createPod"],
    events: [{ type: "Normal", reason: "CreatingPod", message: `Creating a ${queue.spec.instanceShape} pod for job ${job.spec.uuid}.` }],
  };
}

function waiting(current: BuildkiteJobStatus, condition: ConditionUpdate, gen: number | undefined, now: Date, events: JobEvent[]): JobPlan {
  return {
    status: { ...current, phase: "Pending", reason: condition.reason, message: condition.message, conditions: setCondition(current.conditions, condition, gen, now) },
    actions: [],
    events,
    requeueAfterMs: QUEUE_WAIT_REQUEUE_MS,
  };
}

function describeShape(queue: BuildkiteQueue): string {
  const r = shapeResources(queue.spec.instanceShape);
  return `${r.vcpu} vCPU, ${r.memory} memory, ${r.disk} disk on ${r.arch}`;
}

function phaseEvent(phase: string, reason: string, message: string): JobEvent {
  const warning = phase === "Failed" || phase === "TimedOut";
  return { type: warning ? "Warning" : "Normal", reason: phase === "Failed" || phase === "TimedOut" ? reason : phase, message };
}
