import type { KubeConfig } from "@kubernetes/client-node";

/** Methods that change something on the API server. */
const WRITES: ReadonlySet<string> = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/**
 * Thrown instead of a Kubernetes write, or a reconcile, while this replica may not act: it is not the leader, or can
 * no longer be sure it is. Callers treat it as any failed request; the replica is stepping down anyway.
 */
export class NotLeaderError extends Error {
  override readonly name = "NotLeaderError";
}

/**
 * Refuses every write made through `kc` while `mayAct()` is false, whoever makes it (controllers, job sources, the
 * Event recorder), so a leader that lost its lease cannot double the work of its successor even in a reconcile that
 * was already under way. client-node 2.x passes every request through the KubeConfig's
 * `applySecurityAuthentication`; `mayAct` is read after it, the last step before the request is sent. The leader
 * elector's own Lease requests go through another KubeConfig.
 */
export function guardWrites(kc: KubeConfig, mayAct: () => boolean): void {
  const authenticate = kc.applySecurityAuthentication.bind(kc);
  kc.applySecurityAuthentication = async (context) => {
    await authenticate(context);
    const method = context.getHttpMethod();
    if (WRITES.has(method) && !mayAct()) {
      throw new NotLeaderError(`not the leader: refused ${method} ${new URL(context.getUrl()).pathname}`);
    }
  };
}
