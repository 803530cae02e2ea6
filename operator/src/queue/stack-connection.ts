import { createHash } from "node:crypto";
import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { NotificationBatcher } from "../buildkite/notifier.js";
import { stackKey, StacksClient } from "../buildkite/stacks-client.js";
import type { RequestReport } from "../buildkite/transport.js";
import { BUILDKITE_AGENT_ENDPOINT } from "../config/config.js";
import type { ControllerContext } from "../kube/controller.js";
import type { Connection } from "./source-duties.js";
import { registrationError, SourceError } from "./source-support.js";

/** How the job sources talk to Buildkite; one set for the whole operator. */
export interface JobSourceSettings {
  /** Identifies this Kubernetes cluster in stack keys, so two clusters never share a stack. */
  clusterId: string;
  /** How often scheduled jobs are listed (default 1000 ms). */
  pollIntervalMs: number;
  /** How often jobs not yet started are checked for cancellation (default 5000 ms). */
  stateCheckIntervalMs: number;
  /** Reservation length asked of Buildkite; reservations are extended at a third of it (default 900 s). */
  reservationExpirySeconds: number;
  /** The longest wait between attempts after failures (default 30000 ms). */
  maxBackoffMs: number;
  /** With job tokens Required, how soon after a refusal Buildkite is asked again before anything is reserved (default 60000 ms). */
  jobTokenProbeMs: number;
  /** Attempts per Stacks API call (default 5). */
  maxAttempts?: number;
  onRequest?: (r: RequestReport) => void;
  /** The only agent API endpoints the queue's token may be sent to. */
  allowedEndpoints: readonly string[];
}

export const DEFAULT_JOB_SOURCE_SETTINGS: Omit<JobSourceSettings, "clusterId"> = {
  allowedEndpoints: [BUILDKITE_AGENT_ENDPOINT],
  pollIntervalMs: 1_000,
  stateCheckIntervalMs: 5_000,
  reservationExpirySeconds: 900,
  maxBackoffMs: 30_000,
  jobTokenProbeMs: 60_000,
};

/** The Stacks API key of a queue's stack in this cluster (its uid included: a queue made anew gets a new stack). */
export const queueStackKey = (queue: BuildkiteQueue, settings: Pick<JobSourceSettings, "clusterId">): string =>
  stackKey({
    clusterId: settings.clusterId,
    namespace: queue.metadata.namespace ?? "",
    queue: queue.metadata.name ?? "",
    uid: queue.metadata.uid ?? "",
  });

/** A Stacks API client for a queue's endpoint and token, reporting its requests as the settings say. */
export function stacksClientFor(
  queue: BuildkiteQueue,
  token: string,
  ctx: Pick<ControllerContext, "clock" | "logger">,
  settings: Pick<JobSourceSettings, "maxAttempts" | "onRequest">,
): StacksClient {
  return new StacksClient({
    endpoint: queue.spec.endpoint,
    token,
    clock: ctx.clock,
    logger: ctx.logger,
    ...(settings.maxAttempts !== undefined ? { maxAttempts: settings.maxAttempts } : {}),
    ...(settings.onRequest ? { onRequest: settings.onRequest } : {}),
  });
}

/** What a connection is good for: the same endpoint, queue and token. */
export const fingerprintOf = (queue: BuildkiteQueue, token: string): string =>
  createHash("sha256")
    .update(JSON.stringify([queue.spec.endpoint, queue.spec.queue, token]))
    .digest("hex");

/**
 * Checks that the token is a cluster agent token and registers the queue's stack (idempotent): the connection every
 * duty of the job source uses, and the Registered condition to show.
 */
export async function register(
  queue: BuildkiteQueue,
  token: string,
  ctx: Pick<ControllerContext, "clock" | "logger">,
  settings: JobSourceSettings,
): Promise<{ connection: Connection; condition: ConditionUpdate }> {
  const client = stacksClientFor(queue, token, ctx, settings);
  const key = queueStackKey(queue, settings);
  const identity = await client.identity().catch((err: unknown) => {
    throw registrationError(err, queue);
  });
  if (!identity.cluster_uuid) {
    throw new SourceError(
      "UnclusteredToken",
      `The token in Secret ${queue.spec.agentTokenSecretRef.name} is not a cluster agent token; the Stacks API needs one (bkct_…) from the cluster that holds queue ${queue.spec.queue}.`,
      "Registered",
    );
  }
  const stack = await client
    .register(key, queue.spec.queue, {
      namespace: queue.metadata.namespace ?? "",
      queue: queue.metadata.name ?? "",
      shape: queue.spec.instanceShape,
    })
    .catch((err: unknown) => {
      throw registrationError(err, queue);
    });
  const notifier = new NotificationBatcher({ client, stackKey: key, clock: ctx.clock, logger: ctx.logger });
  return {
    connection: { fingerprint: fingerprintOf(queue, token), client, notifier, key, queueKey: stack.cluster_queue_key },
    condition: {
      type: "Registered",
      status: "True",
      reason: "Registered",
      message: `Registered as Buildkite stack ${key} for queue ${stack.cluster_queue_key} of cluster ${identity.cluster_name ?? identity.cluster_uuid}.`,
    },
  };
}
