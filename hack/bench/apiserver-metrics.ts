import type { LocalCluster } from "../../test/support/cluster.js";
import { httpGet } from "../../test/support/https-probe.js";

/**
 * The API server's own count of the requests it served (`apiserver_request_total` on its /metrics), by verb and
 * resource: read before and after a row, the difference is what every client of the cluster asked of it during the
 * row (the system under test, the scheduler, the controller-manager, KWOK, the fast runner and the benchmark's own
 * watches). The bare-pods row of the same run is what the cluster itself spends on a pod.
 */
export type RequestCounts = Map<string, number>;

/** `VERB resource[.group][/subresource]`, e.g. `POST pods`, `PATCH pods/status`, `PUT leases.coordination.k8s.io`. */
function keyOf(labels: Record<string, string>): string | undefined {
  const resource = labels.resource ?? "";
  // Non-resource URLs (/metrics, /readyz, discovery) are the benchmark's and the components' health checks.
  if (resource === "") return undefined;
  const group = labels.group ? `.${labels.group}` : "";
  const sub = labels.subresource ? `/${labels.subresource}` : "";
  return `${labels.verb ?? "?"} ${resource}${group}${sub}`;
}

/** Parses the `apiserver_request_total` samples of a Prometheus text page, summed over codes and scopes. */
export function parseRequestTotals(page: string): RequestCounts {
  const counts: RequestCounts = new Map();
  for (const line of page.split("\n")) {
    if (!line.startsWith("apiserver_request_total{")) continue;
    const close = line.lastIndexOf("}");
    const labels: Record<string, string> = {};
    for (const m of line.slice("apiserver_request_total{".length, close).matchAll(/(\w+)="([^"]*)"/g))
      labels[m[1] ?? ""] = m[2] ?? "";
    const key = keyOf(labels);
    if (key === undefined) continue;
    counts.set(key, (counts.get(key) ?? 0) + Number(line.slice(close + 1).trim()));
  }
  return counts;
}

/** The API server's request counts now (as the cluster admin). */
export async function apiserverRequests(cluster: LocalCluster): Promise<RequestCounts> {
  const { pki } = cluster;
  const res = await httpGet(
    `${cluster.server}/metrics`,
    { ca: pki.caCert, cert: pki.adminCert, key: pki.adminKey },
    10_000,
  );
  if (res.status !== 200) throw new Error(`GET ${cluster.server}/metrics: ${res.status}`);
  return parseRequestTotals(res.body);
}

/** `after − before`, per key; keys that did not grow are left out. */
export function requestsBetween(before: RequestCounts, after: RequestCounts): RequestCounts {
  const out: RequestCounts = new Map();
  for (const [k, n] of after) {
    const d = n - (before.get(k) ?? 0);
    if (d > 0) out.set(k, d);
  }
  return out;
}

/** Requests per job by key, largest first. */
export function perJob(counts: RequestCounts, jobs: number): [string, number][] {
  return [...counts].map(([k, n]): [string, number] => [k, n / Math.max(jobs, 1)]).sort((a, b) => b[1] - a[1]);
}

export const total = (counts: RequestCounts): number => [...counts.values()].reduce((a, b) => a + b, 0);
