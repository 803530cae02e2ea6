import { isDeepStrictEqual } from "node:util";
import { setCondition, type Condition, type ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteQueue, BuildkiteQueueStatus } from "../api/generated/buildkite-queue.js";
import { serviceAccountName } from "../api/names.js";
import { concurrency, shapeResources } from "../api/shapes.js";
import { LABELS } from "../api/keys.js";
import { notMarkedMessage } from "./agent-token.js";

/** What the queue controller found out while reconciling one queue. */
export interface QueueObservation {
  queue: BuildkiteQueue;
  /** BuildkiteJobs of this queue that hold a slot and have not reached a terminal phase (from the cache). */
  activeJobs: number;
  /** BuildkiteJobs of this queue waiting for a slot. */
  waitingJobs: number;
  /** Whether the agent token Secret and its key exist, and the Secret is marked as an agent token. */
  secret: "present" | "missing" | "missingKey" | "notMarked";
  /** Why the queue's endpoint may not be sent its token (not an allowed endpoint); undefined when it may. */
  endpointRefused?: string | undefined;
  /** A child object the API server refused, with its message (e.g. a StorageClass that does not exist). */
  childError?: { kind: string; name: string; message: string };
  /** The queue's Buildkite conditions from its job source (Registered, Dispatching). */
  buildkite?: readonly ConditionUpdate[];
}

/** Conditions kept from the stored status: a CredentialsReady stays only while something still reports it. */
function withoutStale(queue: BuildkiteQueue, reported: readonly ConditionUpdate[]): Condition[] {
  const stored = queue.status?.conditions ?? [];
  return stored.filter((c) => c.type !== "CredentialsReady" || reported.some((r) => r.type === c.type));
}

/** The status a queue should have. Pure; written only when it differs from what is stored. */
export function planQueueStatus(obs: QueueObservation, now: Date): BuildkiteQueueStatus {
  const { queue } = obs;
  const total = concurrency(queue.spec);
  const gen = queue.metadata.generation;
  const ref = queue.spec.agentTokenSecretRef;
  const ns = queue.metadata.namespace ?? "";
  let ready: ConditionUpdate;
  if (obs.endpointRefused !== undefined) {
    ready = { type: "Ready", status: "False", reason: "EndpointNotAllowed", message: obs.endpointRefused };
  } else if (obs.secret === "missing") {
    ready = {
      type: "Ready",
      status: "False",
      reason: "AgentTokenSecretMissing",
      message: `Secret ${ref.name} not found in namespace ${ns}; create it: kubectl create secret generic ${ref.name} -n ${ns} --from-literal=${ref.key}=<agent token> && kubectl label secret ${ref.name} -n ${ns} ${LABELS.agentToken}=true`,
    };
  } else if (obs.secret === "notMarked") {
    ready = { type: "Ready", status: "False", reason: "AgentTokenSecretNotMarked", message: notMarkedMessage(queue) };
  } else if (obs.secret === "missingKey") {
    ready = {
      type: "Ready",
      status: "False",
      reason: "AgentTokenSecretKeyMissing",
      message: `Secret ${ref.name} has no key "${ref.key}"; add it or set agentTokenSecretRef.key to the key that holds the token`,
    };
  } else if (obs.childError) {
    ready = {
      type: "Ready",
      status: "False",
      reason: "ChildRefused",
      message: `The API server refused ${obs.childError.kind} ${obs.childError.name}: ${obs.childError.message}`,
    };
  } else {
    ready = {
      type: "Ready",
      status: "True",
      reason: "Ready",
      message: `Jobs run as ${total} concurrent ${queue.spec.instanceShape} pods at most.`,
    };
  }
  return {
    ...queue.status,
    ...(gen !== undefined ? { observedGeneration: gen } : {}),
    concurrency: total,
    active: obs.activeJobs,
    waiting: obs.waitingJobs,
    slots: `${obs.activeJobs}/${total}`,
    arch: shapeResources(queue.spec.instanceShape).arch,
    serviceAccountName: serviceAccountName(queue),
    conditions: [ready, ...(obs.buildkite ?? [])].reduce(
      (list, c) => setCondition(list, c, gen, now),
      withoutStale(queue, obs.buildkite ?? []),
    ),
  };
}

/** How often at most a queue's status is written when only its job counts changed. */
export const COUNTS_WRITE_INTERVAL_MS = 1_000;

/**
 * Whether `next` differs from `stored` only in the job counts (`active`, `waiting`, `slots`), which change with every
 * job: such a write can wait for {@link COUNTS_WRITE_INTERVAL_MS}, so a busy queue costs a status write a second, not
 * one per job. Any other change (a condition, the concurrency) is written at once. Pure.
 */
export function onlyCountsChanged(stored: BuildkiteQueueStatus, next: BuildkiteQueueStatus): boolean {
  const counts = { active: stored.active, waiting: stored.waiting, slots: stored.slots };
  return isDeepStrictEqual({ ...next, ...counts }, stored);
}
