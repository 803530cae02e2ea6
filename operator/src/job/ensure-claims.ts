import type { V1PersistentVolumeClaim } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import type { ControllerContext } from "../kube/controller.js";
import { apiMessage, createRefusal, isAlreadyExists } from "../kube/field-manager.js";
import { desiredCacheClaims } from "../queue/children.js";

/** Whether a job's pod can be made now: its claims exist, one is going away (look again soon), or one is refused. */
export type ClaimsOutcome = { ready: true } | { wait: string } | { rejected: string };

/**
 * Makes the cache claims `job`'s pod mounts in `slot` — its own scope's, see {@link desiredCacheClaims} — right before
 * the pod. A claim already there is a claim an earlier job of the same scope and slot made (and wrote to): that is
 * the cache. It must be the queue's own, though: a claim of that name someone else made is never mounted.
 */
export async function ensureCacheClaims(
  ctx: ControllerContext,
  queue: BuildkiteQueue,
  job: BuildkiteJob,
  slot: number,
): Promise<ClaimsOutcome> {
  for (const claim of desiredCacheClaims(queue, job, slot)) {
    const name = claim.metadata?.name ?? "";
    const namespace = claim.metadata?.namespace ?? "";
    const existing = ctx.caches.claims.get(name, namespace) ?? (await create(ctx, claim));
    if (existing === "created") continue;
    if ("rejected" in existing) return existing;
    // The scheduler refuses a pod whose claim is being deleted, and the job would fail as unschedulable much later.
    if (existing.metadata?.deletionTimestamp !== undefined) return { wait: `cache claim ${name} is being deleted` };
    if (!existing.metadata?.ownerReferences?.some((o) => o.controller === true && o.uid === queue.metadata.uid)) {
      return {
        rejected: `Cache claim ${name} exists but was not made by queue ${queue.metadata.name ?? ""}, so the job does not mount it; delete the claim`,
      };
    }
  }
  return { ready: true };
}

async function create(
  ctx: ControllerContext,
  claim: V1PersistentVolumeClaim,
): Promise<"created" | V1PersistentVolumeClaim | { rejected: string }> {
  const name = claim.metadata?.name ?? "";
  const namespace = claim.metadata?.namespace ?? "";
  try {
    await ctx.clients.core.createNamespacedPersistentVolumeClaim({ namespace, body: claim });
    ctx.logger.info("Created cache claim", { namespace, name, queue: claim.metadata?.ownerReferences?.[0]?.name });
    return "created";
  } catch (err) {
    // Made a moment ago by another job of the scope (or the cache lags): read it, to check what it is.
    if (isAlreadyExists(err)) return ctx.clients.core.readNamespacedPersistentVolumeClaim({ name, namespace });
    // A quota or a policy refused it: retrying the same claim cannot help. The operator's own RBAC lacking the verb
    // ("denied") is a deployment mistake that fixing its role cures, so that is retried.
    if (createRefusal(err) === "refused")
      return { rejected: `The API server refused cache claim ${name}: ${apiMessage(err)}` };
    throw err;
  }
}
