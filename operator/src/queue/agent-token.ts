import type { V1Secret } from "@kubernetes/client-node";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { LABELS } from "../api/keys.js";
import { normalizeEndpoint } from "../config/config.js";
import type { Clock } from "../kube/clock.js";
import { isNotFound } from "../kube/field-manager.js";
import type { KubeClients } from "../kube/resources.js";
import { SourceError } from "./source-support.js";

/** What a queue's token Secret holds, as far as anyone but the job source may know (never the token itself). */
export type TokenSecretState = "present" | "missing" | "missingKey" | "notMarked";

interface Read {
  state: TokenSecretState;
  token?: string;
}

/** How long one read of a token Secret is used: queues reconcile on every job change, and rotations are rare. */
const READ_MAX_AGE_MS = 10_000;

/**
 * The one reader of the queues' agent token Secrets (the operator does not watch Secrets): the queue controller asks
 * for the Secret's state, the job source for the token, and both are served from the same read, taken again at most
 * every {@link READ_MAX_AGE_MS} per queue (sooner when the queue names another Secret or key), so a rotated or deleted
 * token is noticed by both at once.
 */
export class AgentTokenReader {
  private readonly reads = new Map<string, { ref: string; atMs: number; read: Promise<Read> }>();

  constructor(
    private readonly clients: Pick<KubeClients, "core">,
    private readonly clock: Clock,
    /** The only agent API endpoints a queue's token may be sent to. */
    private readonly allowedEndpoints: readonly string[],
  ) {}

  /** The Secret's state, for the queue's status. */
  async state(queue: BuildkiteQueue): Promise<TokenSecretState> {
    return (await this.read(queue)).state;
  }

  /**
   * The queue's agent token; a SourceError saying what to fix when the queue's endpoint is not allowed (checked before
   * the Secret is even read) or the Secret is missing, unmarked or lacks the key.
   */
  async token(queue: BuildkiteQueue): Promise<string> {
    const refused = endpointRefusal(queue, this.allowedEndpoints);
    if (refused !== undefined) throw new SourceError("EndpointNotAllowed", refused, "Registered");
    const { state, token } = await this.read(queue);
    const ref = queue.spec.agentTokenSecretRef;
    const namespace = queue.metadata.namespace ?? "";
    switch (state) {
      case "missing":
        throw new SourceError(
          "AgentTokenSecretMissing",
          `Secret ${ref.name} not found in namespace ${namespace}; no jobs are taken from Buildkite until it exists.`,
          "Registered",
        );
      case "notMarked":
        throw new SourceError("AgentTokenSecretNotMarked", notMarkedMessage(queue), "Registered");
      case "missingKey":
        throw new SourceError(
          "AgentTokenSecretKeyMissing",
          `Secret ${ref.name} has no key "${ref.key}" holding the agent token.`,
          "Registered",
        );
      case "present":
        return token ?? "";
    }
  }

  /** Forgets what was read for the queue (it was deleted). */
  forget(queue: BuildkiteQueue): void {
    this.reads.delete(`${queue.metadata.namespace ?? ""}/${queue.metadata.name ?? ""}`);
  }

  private read(queue: BuildkiteQueue): Promise<Read> {
    const key = `${queue.metadata.namespace ?? ""}/${queue.metadata.name ?? ""}`;
    const ref = JSON.stringify(queue.spec.agentTokenSecretRef);
    const now = this.clock.nowMs();
    const seen = this.reads.get(key);
    if (seen && seen.ref === ref && now - seen.atMs < READ_MAX_AGE_MS) return seen.read;
    const read = readSecret(this.clients, queue);
    this.reads.set(key, { ref, atMs: now, read });
    // A failed read is not kept: the next caller reads again.
    read.catch(() => {
      if (this.reads.get(key)?.read === read) this.reads.delete(key);
    });
    return read;
  }
}

async function readSecret(clients: Pick<KubeClients, "core">, queue: BuildkiteQueue): Promise<Read> {
  const ref = queue.spec.agentTokenSecretRef;
  let secret: V1Secret;
  try {
    secret = await clients.core.readNamespacedSecret({ name: ref.name, namespace: queue.metadata.namespace ?? "" });
  } catch (err) {
    if (isNotFound(err)) return { state: "missing" };
    throw err;
  }
  // Nothing is taken from a Secret a person did not mark: its value is never held, let alone sent.
  if (!isMarkedAgentToken(secret)) return { state: "notMarked" };
  const encoded = secret.data?.[ref.key];
  const token = encoded !== undefined ? Buffer.from(encoded, "base64").toString("utf8").trim() : "";
  return token === "" ? { state: "missingKey" } : { state: "present", token };
}

/** Whether a person marked the Secret as holding a Buildkite agent token (label `buildkite.com/agent-token=true`). */
export const isMarkedAgentToken = (secret: V1Secret): boolean =>
  secret.metadata?.labels?.[LABELS.agentToken] === "true";

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
