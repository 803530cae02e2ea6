import type { BuildkiteQueue } from "./generated/buildkite-queue.js";

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

/** The PersistentVolumeClaim of cache volume `cache` for concurrency slot `slot`. */
export const cacheClaimName = (queue: Named, cache: string, slot: number): string => `bkq-${nameOf(queue)}-${cache}-${slot}`;

/** The BuildkiteJob of a Buildkite job UUID: one name per job, so a second create of the same job is refused. */
export const jobResourceName = (uuid: string): string => `bkj-${uuid.toLowerCase()}`;

/** The Secret with the job acquisition token of one job, owned by its BuildkiteJob. */
export const jobTokenSecretName = (uuid: string): string => `bkj-${uuid.toLowerCase()}-token`;
