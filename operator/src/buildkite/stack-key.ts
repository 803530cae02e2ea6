import { createHash } from "node:crypto";

/** What a stack key must identify: one queue of one namespace in one Kubernetes cluster. */
export interface StackKeyParts {
  clusterId: string;
  namespace: string;
  queue: string;
  /**
   * The BuildkiteQueue's uid: a queue deleted and created again under the same name (`kubectl replace --force`) gets
   * a stack of its own, so the old one's deregistration can never take the new one's stack away.
   */
  uid: string;
}

const PREFIX = "bk-op-";
/** 16 hex digits = 64 bits of sha256; an organisation has at most tens of stacks, so collisions are not a concern. */
const HASH_CHARS = 16;
/** Kubernetes label values and agent-stack-k8s keys stop at 63; Buildkite allows 80, so 63 fits both. */
const MAX_LENGTH = 63;
const READABLE_CHARS = MAX_LENGTH - PREFIX.length - 1 - HASH_CHARS;

/**
 * The Stacks API key for one queue, e.g. `bk-op-ci-linux-3f2a…`. Stable across restarts (registering again updates
 * the same stack instead of leaking one of the org's 30), unique per cluster, namespace, queue and queue uid, at most 63
 * characters of `[A-Za-z0-9_-]` (Buildkite's key pattern). The readable part is only a hint for humans reading the
 * Buildkite UI; the hash suffix carries the uniqueness, so truncation and character replacement are harmless.
 */
export function stackKey(parts: StackKeyParts): string {
  // JSON keeps the parts apart, so ("a-b", "c") and ("a", "b-c") hash differently.
  const digest = createHash("sha256")
    .update(JSON.stringify([parts.clusterId, parts.namespace, parts.queue, parts.uid]))
    .digest("hex");
  const readable = `${parts.namespace}-${parts.queue}`
    .replace(/[^A-Za-z0-9_-]+/g, "-")
    .replace(/-{2,}/g, "-")
    .slice(0, READABLE_CHARS)
    .replace(/^-+|-+$/g, "");
  return `${PREFIX}${readable === "" ? "" : `${readable}-`}${digest.slice(0, HASH_CHARS)}`;
}
