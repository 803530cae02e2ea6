import type { V1Secret } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { LABELS, MANAGED_BY } from "../api/keys.js";
import { jobTokenSecretName } from "../api/names.js";
import { BuildkiteApiError } from "../buildkite/errors.js";
import { apiMessage, isAlreadyExists, isNotFound } from "../kube/field-manager.js";
import type { KubeClients } from "../kube/resources.js";
import { normalizeEndpoint } from "../config/config.js";

/** The job source's failures in words for the queue's conditions, and the job token Secret it writes. */

/** A failure with the condition reason and message a person reads on the queue. */
export class SourceError extends Error {
  constructor(readonly reason: string, message: string, readonly phase: "Registered" | "Dispatching") {
    super(message);
  }
}

/** Writes a job's token into its Secret, owned by its BuildkiteJob so both go together. */
export async function writeTokenSecret(clients: KubeClients, job: BuildkiteJob, token: string): Promise<void> {
  const namespace = job.metadata.namespace ?? "";
  const name = jobTokenSecretName(job.spec.uuid);
  const body: V1Secret = {
    metadata: {
      name, namespace,
      labels: { [LABELS.managedBy]: MANAGED_BY, [LABELS.queue]: job.spec.queueRef.name, [LABELS.jobUuid]: job.spec.uuid.toLowerCase() },
      ownerReferences: [{ apiVersion: job.apiVersion, kind: job.kind, name: job.metadata.name ?? "", uid: job.metadata.uid ?? "", controller: true, blockOwnerDeletion: false }],
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
      return new SourceError("AgentTokenRejected", `Buildkite rejected the agent token in Secret ${secret}${server}; put a valid cluster agent token (bkct_…) in it.`, "Registered");
    case 403:
      return new SourceError("Forbidden", `Buildkite refused to register the stack${server}; the organisation may be at its stack limit, or the token lacks a permission.`, "Registered");
    case 404:
      return new SourceError("QueueNotFound", `Buildkite does not know queue ${queue.spec.queue} in the token's cluster${server}; create it there or fix spec.queue.`, "Registered");
    default:
      return new SourceError(err.status === undefined || err.retryable ? "BuildkiteUnavailable" : "Rejected", `${err.message}; check spec.endpoint (${queue.spec.endpoint}).`, "Registered");
  }
}

export function dispatchError(err: unknown, what: string): unknown {
  if (!(err instanceof BuildkiteApiError)) return err;
  if (err.status === 401) return new SourceError("AgentTokenRejected", `Buildkite rejected the agent token while trying to ${what}: ${err.message}.`, "Registered");
  if (err.status === 429) return new SourceError("RateLimited", `Buildkite kept rate-limiting requests to ${what}: ${err.message}.`, "Dispatching");
  return new SourceError(err.retryable ? "BuildkiteUnavailable" : "Rejected", `Could not ${what}: ${err.message}.`, "Dispatching");
}

export function errorText(err: unknown): string {
  return err instanceof BuildkiteApiError || err instanceof SourceError ? err.message : apiMessage(err);
}

/** Runs `fn` over `items` with at most `limit` calls in flight, started in order; rejects with the first failure. */
export async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** The queue's agent token from its Secret; a missing Secret or key is a SourceError that says what to create. */
export async function readAgentToken(clients: KubeClients, queue: BuildkiteQueue, allowedEndpoints: readonly string[]): Promise<string> {
  const ref = queue.spec.agentTokenSecretRef;
  const namespace = queue.metadata.namespace ?? "";
  // Checked before the Secret is even read: a token is only ever sent to an endpoint the operator's own configuration
  // names, so whoever may create a queue cannot point it at a server of their own.
  const refused = endpointRefusal(queue, allowedEndpoints);
  if (refused !== undefined) throw new SourceError("EndpointNotAllowed", refused, "Registered");
  let secret: V1Secret;
  try {
    secret = await clients.core.readNamespacedSecret({ name: ref.name, namespace });
  } catch (err) {
    if (isNotFound(err)) throw new SourceError("AgentTokenSecretMissing", `Secret ${ref.name} not found in namespace ${namespace}; no jobs are taken from Buildkite until it exists.`, "Registered");
    throw err;
  }
  if (!isMarkedAgentToken(secret)) throw new SourceError("AgentTokenSecretNotMarked", notMarkedMessage(queue), "Registered");
  const encoded = secret.data?.[ref.key];
  const token = encoded !== undefined ? Buffer.from(encoded, "base64").toString("utf8").trim() : "";
  if (token === "") throw new SourceError("AgentTokenSecretKeyMissing", `Secret ${ref.name} has no key "${ref.key}" holding the agent token.`, "Registered");
  return token;
}

/** Whether a person marked the Secret as holding a Buildkite agent token (label `buildkite.com/agent-token=true`). */
export const isMarkedAgentToken = (secret: V1Secret): boolean => secret.metadata?.labels?.[LABELS.agentToken] === "true";

/** What to do about a token Secret that is not marked as one. */
export function notMarkedMessage(queue: BuildkiteQueue): string {
  const ref = queue.spec.agentTokenSecretRef;
  return `Secret ${ref.name} is not marked as a Buildkite agent token, so its value is never sent to Buildkite; if it holds one, mark it: kubectl label secret ${ref.name} -n ${queue.metadata.namespace ?? ""} ${LABELS.agentToken}=true`;
}

/** Why the queue's endpoint may not be sent a token, or undefined when the operator's configuration allows it. */
export function endpointRefusal(queue: BuildkiteQueue, allowedEndpoints: readonly string[]): string | undefined {
  if (allowedEndpoints.includes(normalizeEndpoint(queue.spec.endpoint))) return undefined;
  return `spec.endpoint ${queue.spec.endpoint} is not an endpoint this operator sends agent tokens to (${allowedEndpoints.join(", ")}); use one of those, or add it to the operator's allowed endpoints (chart value allowedEndpoints, flag --allowed-endpoints).`;
}
