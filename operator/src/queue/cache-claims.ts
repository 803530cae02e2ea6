import type { V1PersistentVolumeClaim, V1Pod } from "@kubernetes/client-node";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { LABELS } from "../api/keys.js";
import { cacheScope } from "../api/names.js";
import { occupies, slotLimit, type QueueCapacity } from "../capacity/queue-capacity.js";
import { isTerminal } from "../job/phase.js";

/** What the queue controller knows about one queue's cache claims, from the caches. */
export interface ClaimObservation {
  queue: BuildkiteQueue;
  /** The claims of the namespace (those of other queues are skipped). */
  claims: readonly V1PersistentVolumeClaim[];
  /** The queue's capacity: its BuildkiteJobs and the slots they hold, as the slot decision sees them. */
  capacity: QueueCapacity;
  /** Pods of the namespace: a claim one of them mounts is in use. */
  pods: readonly V1Pod[];
}

export interface SurplusClaims {
  /** Claims to delete now. */
  remove: string[];
  /** Surplus claims kept for now because a pod or a job may use them: look again later. */
  kept: string[];
}

interface Candidate {
  name: string;
  cache: string;
  scope: string;
  slot: number;
}

/**
 * Claims are made on demand by the job controller, one per cache, scope and slot. The surplus ones are the claims of a
 * cache the queue no longer has, of a slot index the queue can no longer hand out (at or above {@link slotLimit}: a
 * lower maxVCPU, a larger shape once the older jobs are gone), and unscoped claims made before caches had scopes. Of
 * those, a claim stays while a pod mounts it, while a job of its scope holds its slot, and while a job of its scope
 * has no slot yet: the job controller makes a job's claim before its pod, and records the slot after, so neither may
 * be in the caches yet. Claims of scopes that are merely idle stay: they are the cache. Pure.
 */
export function surplusCacheClaims(obs: ClaimObservation): SurplusClaims {
  const { queue } = obs;
  const limit = slotLimit(obs.capacity);
  const caches = new Set((queue.spec.cache ?? []).map((c) => c.name));
  const candidates: Candidate[] = [];
  for (const claim of obs.claims) {
    const meta = claim.metadata ?? {};
    const labels = meta.labels ?? {};
    if (meta.deletionTimestamp !== undefined || labels[LABELS.queue] !== queue.metadata.name) continue;
    const candidate = {
      name: meta.name ?? "",
      cache: labels[LABELS.cache] ?? "",
      scope: labels[LABELS.cacheScope] ?? "",
      slot: Number.parseInt(labels[LABELS.slot] ?? "", 10),
    };
    if (
      candidate.scope === "" ||
      !caches.has(candidate.cache) ||
      !Number.isInteger(candidate.slot) ||
      candidate.slot >= limit
    )
      candidates.push(candidate);
  }
  // Usually nothing is surplus, and the digests below are only worth computing when something is.
  if (candidates.length === 0) return { remove: [], kept: [] };
  const mounted = new Set(
    obs.pods.flatMap((p) => (p.spec?.volumes ?? []).map((v) => v.persistentVolumeClaim?.claimName)),
  );
  const used = usedScopes(obs, new Set(candidates.map((c) => c.cache)));
  const decision: SurplusClaims = { remove: [], kept: [] };
  for (const c of candidates) {
    const inUse =
      mounted.has(c.name) || used.has(`${c.cache}/${c.scope}/${c.slot}`) || used.has(`${c.cache}/${c.scope}/*`);
    (inUse ? decision.kept : decision.remove).push(c.name);
  }
  return decision;
}

/**
 * `cache/scope/slot` of each job that holds a slot, and `cache/scope/*` of each unfinished job without one, for the
 * caches named; under both scope kinds, since a claim of a removed cache or an earlier scope setting counts too.
 */
function usedScopes(obs: ClaimObservation, caches: ReadonlySet<string>): Set<string> {
  const used = new Set<string>();
  for (const seat of obs.capacity.seats) {
    const starting = seat.slot === undefined && !isTerminal(seat.job.status?.phase);
    if (!occupies(seat) && !starting) continue;
    for (const name of caches) {
      for (const scope of ["Pipeline", "Branch"] as const)
        used.add(`${name}/${cacheScope(obs.queue, { name, scope }, seat.job).key}/${seat.slot ?? "*"}`);
    }
  }
  return used;
}
