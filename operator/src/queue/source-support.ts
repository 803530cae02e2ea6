import type { V1Secret } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { LABELS, MANAGED_BY } from "../api/keys.js";
import { jobTokenSecretName } from "../api/names.js";
import { BuildkiteApiError } from "../buildkite/errors.js";
import { apiMessage, isAlreadyExists } from "../kube/field-manager.js";
import { controllerRef, type KubeClients } from "../kube/resources.js";

/** The job source's failures in words for the queue's conditions, and the job token Secret it writes. */

/** A failure with the condition reason and message a person reads on the queue. */
export class SourceError extends Error {
  constructor(
    readonly reason: string,
    message: string,
    readonly phase: "Registered" | "Dispatching",
  ) {
    super(message);
  }
}

/** Writes a job's token into its Secret, owned by its BuildkiteJob so both go together. */
export async function writeTokenSecret(clients: KubeClients, job: BuildkiteJob, token: string): Promise<void> {
  const namespace = job.metadata.namespace ?? "";
  const name = jobTokenSecretName(job.spec.uuid);
  const body: V1Secret = {
    metadata: {
      name,
      namespace,
      labels: {
        [LABELS.managedBy]: MANAGED_BY,
        [LABELS.queue]: job.spec.queueRef.name,
        [LABELS.jobUuid]: job.spec.uuid.toLowerCase(),
      },
      ownerReferences: [controllerRef(job, false)],
    },
    type: "Opaque",
    stringData: { token },
  };
  try {
    await clients.core.createNamespacedSecret({ namespace, body });
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
    await clients.core.replaceNamespacedSecret({ name, namespace, body });
  }
}

/** Turns a failed token check or registration into what to fix. */
export function registrationError(err: unknown, queue: BuildkiteQueue): unknown {
  if (!(err instanceof BuildkiteApiError)) return err;
  const secret = queue.spec.agentTokenSecretRef.name;
  const server = err.serverMessage ? ` (Buildkite: ${err.serverMessage})` : "";
  switch (err.status) {
    case 401:
      return new SourceError(
        "AgentTokenRejected",
        `Buildkite rejected the agent token in Secret ${secret}${server}; put a valid cluster agent token (bkct_…) in it.`,
        "Registered",
      );
    case 403:
      return new SourceError(
        "Forbidden",
        `Buildkite refused to register the stack${server}; the organisation may be at its stack limit, or the token lacks a permission.`,
        "Registered",
      );
    case 404:
      return new SourceError(
        "QueueNotFound",
        `Buildkite does not know queue ${queue.spec.queue} in the token's cluster${server}; create it there or fix spec.queue.`,
        "Registered",
      );
    default:
      return new SourceError(
        err.status === undefined || err.retryable ? "BuildkiteUnavailable" : "Rejected",
        `${err.message}; check spec.endpoint (${queue.spec.endpoint}).`,
        "Registered",
      );
  }
}

export function dispatchError(err: unknown, what: string): unknown {
  if (!(err instanceof BuildkiteApiError)) return err;
  if (err.status === 401)
    return new SourceError(
      "AgentTokenRejected",
      `Buildkite rejected the agent token while trying to ${what}: ${err.message}.`,
      "Registered",
    );
  // The stack is gone (deregistered elsewhere, or Buildkite lost it): register again instead of asking it forever.
  if (err.status === 404)
    return new SourceError(
      "StackNotFound",
      `Buildkite no longer knows the stack while trying to ${what}: ${err.message}; registering it again.`,
      "Registered",
    );
  if (err.status === 429)
    return new SourceError(
      "RateLimited",
      `Buildkite kept rate-limiting requests to ${what}: ${err.message}.`,
      "Dispatching",
    );
  return new SourceError(
    err.retryable ? "BuildkiteUnavailable" : "Rejected",
    `Could not ${what}: ${err.message}.`,
    "Dispatching",
  );
}

export function errorText(err: unknown): string {
  return err instanceof BuildkiteApiError || err instanceof SourceError ? err.message : apiMessage(err);
}

/** Runs `fn` over `items` with at most `limit` calls in flight, started in order; rejects with the first failure. */
export async function eachLimited<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
