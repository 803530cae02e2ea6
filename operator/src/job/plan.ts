import type { V1Pod } from "@kubernetes/client-node";
import { setCondition, type ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteJob, BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { ANNOTATIONS } from "../api/keys.js";
import { concurrency, shapeResources } from "../api/shapes.js";
import { isTerminal, podOutcome } from "./phase.js";
import { podSlot, type SlotDecision } from "../capacity/queue-capacity.js";
import { DEFAULT_START_TIMEOUTS, stuckPod, type StartTimeouts } from "./stuck.js";

import { needsReport, reportOf, RESERVATION_PENDING, STEP_REFUSED } from "./buildkite-contract.js";
import { decideStep } from "./step-request.js";
import { stopping } from "./stopping.js";

export {
  needsReport,
  neverAcquired,
  NEVER_RAN,
  QUEUE_DELETED,
  reportAnnotation,
  reportOf,
  REPORTED,
  RESERVATION_PENDING,
  STEP_REFUSED,
} from "./buildkite-contract.js";

/** What the job controller saw for one BuildkiteJob (from the caches, confirmed live where it matters). */
export interface JobObservation {
  job: BuildkiteJob;
  queue: BuildkiteQueue | undefined;
  /** The job's pod; when the cache has none but the job recorded one, the shell confirms with a live read. */
  pod: V1Pod | undefined;
  /** Whether a concurrency slot is free for the job (only consulted when its pod is to be created). */
  slot: SlotDecision;
  /** When a pod that has not started counts as stuck (default {@link DEFAULT_START_TIMEOUTS}). */
  timeouts?: StartTimeouts;
}

export type JobAction = "createPod" | "deletePod" | "deleteJob";

/** Buildkite states (set on the job by the job source) after which a job that has not started must not start. */
const STOP_BEFORE_START = new Set(["canceled", "expired", "skipped", "broken", "timed_out"]);
/** Buildkite states that make a finished pod's job Canceled rather than Failed. */
const CANCELED = new Set(["canceling", "canceled"]);

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
/** How long a new job waits for Buildkite to confirm its reservation before its status says it is waiting for that. */
export const RESERVING_QUIET_MS = 5_000;
/** How often a job waiting on its queue looks again, in case no queue change wakes it. */
const QUEUE_WAIT_REQUEUE_MS = 30_000;

const queueReady = (queue: BuildkiteQueue): ConditionUpdate | undefined => {
  const ready = queue.status?.conditions?.find((c) => c.type === "Ready");
  if (ready?.status === "True") return undefined;
  return {
    type: "QueueReady",
    status: "False",
    reason: "QueueNotReady",
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

  const taken = job.metadata.annotations?.[ANNOTATIONS.buildkiteState];
  if (isTerminal(current.phase)) {
    // A pod already terminating is waited for, not deleted again on each of its updates meanwhile.
    const actions: JobAction[] = pod && pod.metadata?.deletionTimestamp === undefined ? ["deletePod"] : [];
    if (needsReport(job)) {
      // The job source tells Buildkite (`finish`) and records its answer on the job; the job keeps it as a condition.
      const reported = reportOf(job);
      if (reported === undefined) return { status: current, actions, events };
      const status = { ...current, conditions: setCondition(current.conditions, reported, gen, now) };
      return {
        status,
        actions,
        events: [
          {
            type: reported.status === "True" ? "Normal" : "Warning",
            reason: reported.reason,
            message: reported.message,
          },
        ],
      };
    }
    if (pod) return { status: current, actions, events };
    const ttl = queue?.spec.jobTTLSecondsAfterFinished ?? DEFAULT_TTL_SECONDS;
    const finished = Date.parse(current.finishedAt ?? "") || now.getTime();
    const remaining = finished + ttl * 1000 - now.getTime();
    return remaining <= 0
      ? { status: current, actions: ["deleteJob"], events }
      : { status: current, actions: [], events, requeueAfterMs: remaining };
  }

  const stop = job.metadata.annotations?.[ANNOTATIONS.stop];
  if (stop !== undefined) return stopping(obs, stop, now);

  let recheck: number | undefined;
  if (pod) {
    const ownerUid = pod.metadata?.ownerReferences?.find((o) => o.controller)?.uid;
    if (ownerUid !== job.metadata.uid) {
      // A pod of the same name from an earlier BuildkiteJob that is still going away: never adopt it.
      return {
        status: {
          ...current,
          phase: "Pending",
          reason: "WaitingForOldPod",
          message: `Waiting for an earlier pod named ${pod.metadata?.name ?? ""} to be deleted.`,
        },
        actions: [],
        events,
        requeueAfterMs: 2_000,
      };
    }
    let outcome = podOutcome(pod, queue?.spec.maxJobDurationSeconds);
    if (
      taken !== undefined &&
      STOP_BEFORE_START.has(taken) &&
      outcome.phase !== "Running" &&
      !isTerminal(outcome.phase)
    ) {
      outcome = { ...outcome, phase: "Canceled", ...takenBack(taken, "its pod was deleted") };
    } else if (taken !== undefined && CANCELED.has(taken) && isTerminal(outcome.phase)) {
      outcome = {
        ...outcome,
        phase: "Canceled",
        reason: "CanceledInBuildkite",
        message: `The job was canceled in Buildkite while running; the agent stopped it${outcome.exitCode !== undefined ? ` (exit ${outcome.exitCode})` : ""}.`,
      };
    } else if (outcome.phase === "Pending" || outcome.phase === "Starting") {
      const stuck = stuckPod(pod, queue, obs.timeouts ?? DEFAULT_START_TIMEOUTS, now);
      if ("reason" in stuck) outcome = { ...outcome, phase: "Failed", reason: stuck.reason, message: stuck.message };
      else recheck = stuck.recheckAfterMs;
    }
    const terminal = isTerminal(outcome.phase);
    const status: BuildkiteJobStatus = {
      ...current,
      // A status without the slot its pod runs in (the write after the pod's create was lost): the pod records it.
      ...(current.slot === undefined ? podSlot(pod) : {}),
      ...outcome,
      podName: pod.metadata?.name ?? "",
      podUID: pod.metadata?.uid ?? "",
      ...(terminal ? { finishedAt: outcome.finishedAt ?? now.toISOString() } : {}),
      ...(gen !== undefined ? { observedGeneration: gen } : {}),
    };
    // One Event per job's outcome: routine steps (pod created, running) are in its status, and an Event each cost the
    // API server and etcd as much as the status writes themselves.
    if (terminal && outcome.phase !== current.phase)
      events.push(phaseEvent(outcome.phase, outcome.reason, outcome.message));
    return {
      status,
      actions: terminal ? ["deletePod"] : [],
      events,
      ...(recheck !== undefined ? { requeueAfterMs: recheck } : {}),
    };
  }

  if (current.podUID) {
    // The job had a pod, and a live read confirmed it is gone before the job ended: fail loudly, never re-run.
    const beforeStart = current.phase === "Pending" || current.phase === "Starting";
    const reason = beforeStart ? "PodDeletedBeforeStart" : "PodDeleted";
    const message = `The pod ${current.podName ?? ""} was deleted before the job ${beforeStart ? "started" : "finished"}; the job was not run again. Retry it in Buildkite if needed.`;
    events.push({ type: "Warning", reason, message });
    return {
      status: { ...current, phase: "Failed", reason, message, finishedAt: now.toISOString() },
      actions: [],
      events,
    };
  }

  if (taken !== undefined && STOP_BEFORE_START.has(taken)) {
    // Buildkite took the job back before it had a pod: it never runs here.
    const status: BuildkiteJobStatus = {
      ...current,
      phase: "Canceled",
      ...takenBack(taken, "no pod was created"),
      finishedAt: now.toISOString(),
    };
    events.push({ type: "Normal", reason: status.reason ?? "", message: status.message ?? "" });
    return { status, actions: [], events };
  }

  if (job.metadata.annotations?.[ANNOTATIONS.reservation] === RESERVATION_PENDING) {
    // Its pod would use the cluster agent token, which can acquire the job even when another stack reserved it.
    // Buildkite confirms within a second as a rule: a new job shows no status until then, rather than one more write.
    const age = now.getTime() - new Date(job.metadata.creationTimestamp ?? now).getTime();
    if (current.phase === undefined && age < RESERVING_QUIET_MS)
      return { status: current, actions: [], events, requeueAfterMs: RESERVING_QUIET_MS - age };
    const message = "Waiting for Buildkite to confirm that this stack reserved the job.";
    return {
      status: { ...current, phase: "Pending", reason: "Reserving", message },
      actions: [],
      events,
      requeueAfterMs: QUEUE_WAIT_REQUEUE_MS,
    };
  }

  if (!queue) {
    const message = `BuildkiteQueue ${job.spec.queueRef.name} does not exist in namespace ${job.metadata.namespace ?? ""}; create it or delete this job.`;
    return waiting(
      current,
      { type: "QueueReady", status: "False", reason: "QueueNotFound", message },
      gen,
      now,
      current.reason !== "QueueNotFound" ? [{ type: "Warning", reason: "QueueNotFound", message }] : [],
    );
  }
  const notReady = queueReady(queue);
  if (notReady)
    return waiting(
      current,
      notReady,
      gen,
      now,
      current.reason !== "QueueNotReady"
        ? [{ type: "Warning", reason: "QueueNotReady", message: notReady.message }]
        : [],
    );

  const step = decideStep(queue, job);
  if ("refused" in step) {
    // What the step asks for is the queue's decision: no pod; the job source tells Buildkite (finish) why.
    events.push({ type: "Warning", reason: STEP_REFUSED, message: step.refused });
    return {
      status: {
        ...current,
        phase: "Failed",
        reason: STEP_REFUSED,
        message: step.refused,
        finishedAt: now.toISOString(),
      },
      actions: [],
      events,
    };
  }

  const conditions = setCondition(
    current.conditions,
    { type: "QueueReady", status: "True", reason: "QueueReady", message: "The queue is ready." },
    gen,
    now,
  );
  if ("waiting" in slot) {
    // No place in line in the message: it changes for every waiting job whenever one starts, and rewriting hundreds
    // of statuses per start loaded the API server more than all the useful work together.
    const message = `All ${String(concurrency(queue.spec))} slots of queue ${queue.metadata.name ?? ""} are in use; waiting jobs start by priority, then age.`;
    return {
      status: {
        ...current,
        phase: "Pending",
        shape: queue.spec.instanceShape,
        reason: "WaitingForSlot",
        message,
        conditions,
      },
      actions: [],
      events,
      requeueAfterMs: QUEUE_WAIT_REQUEUE_MS,
    };
  }
  return {
    status: {
      ...current,
      phase: "Pending",
      shape: queue.spec.instanceShape,
      slot: slot.slot,
      reason: "CreatingPod",
      message: `Creating the pod (${describeShape(queue)}).`,
      conditions,
    },
    actions: ["createPod"],
    events,
  };
}

function takenBack(state: string, what: string): { reason: string; message: string } {
  const word = state.replace(/_(.)/g, (_m: string, c: string) => c.toUpperCase());
  return {
    reason: `${word.charAt(0).toUpperCase()}${word.slice(1)}InBuildkite`,
    message: `Buildkite reports the job ${state.replace(/_/g, " ")} before it started here; ${what}.`,
  };
}

function waiting(
  current: BuildkiteJobStatus,
  condition: ConditionUpdate,
  gen: number | undefined,
  now: Date,
  events: JobEvent[],
): JobPlan {
  return {
    status: {
      ...current,
      phase: "Pending",
      reason: condition.reason,
      message: condition.message,
      conditions: setCondition(current.conditions, condition, gen, now),
    },
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
  return {
    type: warning ? "Warning" : "Normal",
    reason: phase === "Failed" || phase === "TimedOut" ? reason : phase,
    message,
  };
}
