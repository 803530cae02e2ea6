import type { KubeConfig } from "@kubernetes/client-node";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/**
 * Who asked the API server for what (`--by-client`): the API server's audit log at the Metadata level, one event per
 * request, grouped by client. Its `apiserver_request_total` counts every client together; the audit log names each:
 * the system under test, the scheduler, each controller of kube-controller-manager (its user agent ends in the
 * controller's name), KWOK, and this benchmark, whose own requests (fast runner, watches) impersonate a user of their
 * own. Writing the log costs the API server, so it is off unless asked for, and then on in every row alike.
 */

/** The benchmark's own requests impersonate this user (in group system:masters, so nothing is refused). */
export const BENCH_USER = "buildkite-bench";

const POLICY = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
`;

/** kube-apiserver flags for an audit log in `dir`, batched so requests do not wait on the file. */
export function auditArgs(dir: string): string[] {
  writeFileSync(join(dir, "audit-policy.yaml"), POLICY);
  return [
    `--audit-policy-file=${join(dir, "audit-policy.yaml")}`,
    `--audit-log-path=${join(dir, "audit.log")}`,
    "--audit-log-format=json",
    "--audit-log-mode=batch",
    "--audit-log-batch-max-wait=1s",
  ];
}

/** Makes `kc`'s requests (and watches) identify as {@link BENCH_USER}. */
export function actAsBench(kc: KubeConfig): void {
  const authenticate = kc.applySecurityAuthentication.bind(kc);
  kc.applySecurityAuthentication = async (context) => {
    await authenticate(context);
    context.setHeaderParam("Impersonate-User", BENCH_USER);
    context.setHeaderParam("Impersonate-Group", "system:masters");
  };
}

const VERBS: Record<string, string> = {
  create: "POST",
  update: "PUT",
  patch: "PATCH",
  get: "GET",
  list: "LIST",
  watch: "WATCH",
  delete: "DELETE",
  deletecollection: "DELETECOLLECTION",
};

interface AuditEvent {
  verb?: string;
  userAgent?: string;
  user?: { username?: string };
  impersonatedUser?: { username?: string };
  objectRef?: { resource?: string; subresource?: string; apiGroup?: string };
  requestReceivedTimestamp?: string;
}

/** The client of an event: the benchmark, a controller of kube-controller-manager, or the user agent's product. */
export function clientOf(e: AuditEvent): string {
  const ua = e.userAgent ?? "?";
  const product = ua.split("/")[0] ?? "?";
  if (e.impersonatedUser?.username === BENCH_USER || product === BENCH_USER) return "benchmark";
  if (product === "kube-controller-manager") return `kube-controller-manager/${ua.split("/").at(-1) ?? "?"}`;
  // client-node names itself on API calls; its watches go out through undici's fetch with undici's name, and the
  // lean request path as the operator. The benchmark's own impersonate BENCH_USER, so these names are the operator.
  if (product === "kubernetes-client-javascript" || product === "undici" || product === "buildkite-operator")
    return "buildkite-operator";
  return product;
}

/** Client → `VERB resource[.group][/subresource]` → requests. */
export type ByClient = Map<string, Map<string, number>>;

/** Counts the audit log's resource requests received in [fromMs, toMs). */
export function readAudit(dir: string, fromMs: number, toMs: number): ByClient {
  const out: ByClient = new Map();
  const file = join(dir, "audit.log");
  if (!existsSync(file)) return out;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (line === "") continue;
    const e = JSON.parse(line) as AuditEvent;
    const at = Date.parse(e.requestReceivedTimestamp ?? "");
    const ref = e.objectRef;
    if (!(at >= fromMs && at < toMs) || !ref?.resource) continue;
    const key = `${VERBS[e.verb ?? ""] ?? e.verb ?? "?"} ${ref.resource}${ref.apiGroup ? `.${ref.apiGroup}` : ""}${ref.subresource ? `/${ref.subresource}` : ""}`;
    const client = clientOf(e);
    const counts = out.get(client) ?? new Map<string, number>();
    counts.set(key, (counts.get(key) ?? 0) + 1);
    out.set(client, counts);
  }
  return out;
}

/** Requests per job by client (net of the idle rate: `idle` counted over `idleMs`, the row over `rowMs`). */
export function perJobByClient(
  row: ByClient,
  idle: ByClient,
  rowMs: number,
  idleMs: number,
  jobs: number,
): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const [client, counts] of row) {
    const keys: Record<string, number> = {};
    for (const [k, n] of counts) {
      const net = n - (idle.get(client)?.get(k) ?? 0) * (rowMs / idleMs);
      if (net > 0) keys[k] = net / Math.max(jobs, 1);
    }
    if (Object.keys(keys).length > 0) out[client] = keys;
  }
  return out;
}
