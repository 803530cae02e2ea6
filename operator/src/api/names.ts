import { createHash } from "node:crypto";
import type { BuildkiteJob } from "./generated/buildkite-job.js";
import type { BuildkiteQueue, BuildkiteQueueSpecCacheItem } from "./generated/buildkite-queue.js";

/**
 * Deterministic names of the objects the operator makes: a reconcile can always find what an earlier one (or an
 * earlier operator process) made, and a create that hits AlreadyExists means the work was already done.
 */
type Named = Pick<BuildkiteQueue, "metadata">;

const nameOf = (o: Named): string => o.metadata.name ?? "";

/** The ServiceAccount job pods of a queue run as (carries the IRSA annotation when `aws` is set). */
export const serviceAccountName = (queue: Named): string => `bkq-${nameOf(queue)}`;

/** The NetworkPolicy that isolates a queue's job pods. */
export const networkPolicyName = (queue: Named): string => `bkq-${nameOf(queue)}`;

/** Who shares a cache volume: the jobs of one pipeline, or of one pipeline and branch. */
export interface CacheScope {
  /** A short, DNS-safe digest naming the scope (and the queue and cache, see {@link cacheScope}). */
  key: string;
  pipeline: string;
  /** Set for Branch scope only. */
  branch?: string;
}

/** Hex digits of the scope digest: 80 bits, so no one can choose a pipeline or branch name that lands on another's. */
const SCOPE_KEY_LENGTH = 20;

/**
 * The scope of cache volume `cache` of `queue` that `job` reads and writes: its pipeline, or its pipeline and branch.
 * The key digests the queue and cache names too, so two queues (or caches) whose names join to the same claim name
 * prefix (`a-b` + `c`, `a` + `b-c`) still never share a claim.
 */
export function cacheScope(
  queue: Named,
  cache: Pick<BuildkiteQueueSpecCacheItem, "name" | "scope">,
  job: Pick<BuildkiteJob, "spec">,
): CacheScope {
  const pipeline = job.spec.pipelineSlug ?? "";
  const branch = cache.scope === "Branch" ? (job.spec.branch ?? "") : undefined;
  const key = createHash("sha256")
    .update(JSON.stringify([nameOf(queue), cache.name, cache.scope, pipeline, branch ?? null]))
    .digest("hex")
    .slice(0, SCOPE_KEY_LENGTH);
  return { key, pipeline, ...(branch !== undefined ? { branch } : {}) };
}

/**
 * The PersistentVolumeClaim of cache volume `cache` for one scope and concurrency slot: ReadWriteOnce storage is
 * mounted by one running job at a time, and a job mounts only its own scope's claims.
 */
export const cacheClaimName = (queue: Named, cache: string, scope: CacheScope, slot: number): string =>
  `bkq-${nameOf(queue)}-${cache}-${scope.key}-${slot}`;

/** The BuildkiteJob of a Buildkite job UUID: one name per job, so a second create of the same job is refused. */
export const jobResourceName = (uuid: string): string => `bkj-${uuid.toLowerCase()}`;

/** The Secret with the job acquisition token of one job, owned by its BuildkiteJob. */
export const jobTokenSecretName = (uuid: string): string => `bkj-${uuid.toLowerCase()}-token`;
