import { controllerRef } from "../kube/resources.js";
import type {
  V1NetworkPolicy,
  V1NetworkPolicyEgressRule,
  V1NetworkPolicyPeer,
  V1OwnerReference,
  V1PersistentVolumeClaim,
  V1ServiceAccount,
} from "@kubernetes/client-node";
import { ANNOTATIONS, FINALIZER, LABELS, MANAGED_BY } from "../api/keys.js";
import { cacheClaimName, cacheScope, networkPolicyName, serviceAccountName } from "../api/names.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import type { DnsPeer } from "../config/config.js";

/** Cloud metadata endpoints (AWS IMDS v4/v6, ECS task metadata and credentials, EKS Pod Identity) a job never reaches. */
export const METADATA_CIDRS_V4 = ["169.254.169.254/32", "169.254.170.2/32", "169.254.170.23/32"] as const;
export const METADATA_CIDRS_V6 = ["fd00:ec2::254/128", "fd00:ec2::23/128"] as const;

const owner = (queue: BuildkiteQueue): V1OwnerReference => controllerRef(queue, true);

const labels = (queue: BuildkiteQueue): Record<string, string> => ({
  [LABELS.managedBy]: MANAGED_BY,
  [LABELS.queue]: queue.metadata.name ?? "",
});

/** The ServiceAccount of a queue's job pods; annotated for IRSA when the queue has `aws`. */
export function desiredServiceAccount(queue: BuildkiteQueue): V1ServiceAccount {
  return {
    apiVersion: "v1",
    kind: "ServiceAccount",
    metadata: {
      name: serviceAccountName(queue),
      namespace: queue.metadata.namespace ?? "",
      labels: labels(queue),
      annotations: queue.spec.aws ? { [ANNOTATIONS.irsaRoleArn]: queue.spec.aws.roleArn } : {},
      ownerReferences: [owner(queue)],
    },
    // Job pods never get an API token: they have no business with the Kubernetes API.
    automountServiceAccountToken: false,
  };
}

/** What a NetworkPolicy peer selects: an address range, or pods (by their labels and their namespace's). */
interface Peer {
  cidr?: string;
  namespaceSelector?: Record<string, string>;
  podSelector?: Record<string, string>;
}

const toPeer = (p: Peer): V1NetworkPolicyPeer =>
  p.cidr !== undefined
    ? { ipBlock: { cidr: p.cidr } }
    : {
        ...(p.namespaceSelector ? { namespaceSelector: { matchLabels: p.namespaceSelector } } : {}),
        podSelector: { matchLabels: p.podSelector ?? {} },
      };

/** The port of an http(s) URL (80 or 443 when it names none). */
export function urlPort(url: string): number {
  const parsed = new URL(url);
  return parsed.port !== "" ? Number(parsed.port) : parsed.protocol === "https:" ? 443 : 80;
}

/**
 * The NetworkPolicy of a queue's job pods: no ingress at all; DNS (TCP/UDP 53) only to the cluster's resolvers (the
 * queue's `network.dns`, else `clusterDNS`; none when `dns` is empty), so port 53 is no tunnel to anywhere else; then
 * either (Internet) every address except the cloud metadata endpoints (unless `denyMetadata: false`) and
 * `extraDeniedCIDRs`, or (Restricted) only the `allowedDestinations` and the proxy's port.
 */
export function desiredNetworkPolicy(queue: BuildkiteQueue, clusterDNS: DnsPeer): V1NetworkPolicy {
  const { network } = queue.spec;
  const resolvers: Peer[] = network.dns ?? [clusterDNS];
  // `dns: []` names no resolver: no DNS rule at all. A rule whose `to` is empty (the API server drops it) would allow
  // port 53 to every address.
  const egress: V1NetworkPolicyEgressRule[] =
    resolvers.length === 0
      ? []
      : [
          {
            to: resolvers.map(toPeer),
            ports: [
              { protocol: "UDP", port: 53 },
              { protocol: "TCP", port: 53 },
            ],
          },
        ];
  if (network.egress === "Internet") {
    const extra = network.extraDeniedCIDRs ?? [];
    const deniedV4 = [...(network.denyMetadata ? METADATA_CIDRS_V4 : []), ...extra.filter((c) => !c.includes(":"))];
    const deniedV6 = [...(network.denyMetadata ? METADATA_CIDRS_V6 : []), ...extra.filter((c) => c.includes(":"))];
    const block = (cidr: string, except: string[]): V1NetworkPolicyPeer => ({
      ipBlock: { cidr, ...(except.length > 0 ? { except } : {}) },
    });
    egress.push({ to: [block("0.0.0.0/0", deniedV4), block("::/0", deniedV6)] });
  } else {
    for (const dest of network.allowedDestinations ?? []) {
      const ports = (dest.ports ?? []).map((p) => ({ protocol: p.protocol, port: p.port }));
      egress.push({ to: [{ ipBlock: { cidr: dest.cidr } }], ...(ports.length > 0 ? { ports } : {}) });
    }
    const proxy = network.proxy;
    if (proxy) egress.push({ to: [toPeer(proxy)], ports: [{ protocol: "TCP", port: urlPort(proxy.url) }] });
  }
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    // The finalizer keeps the policy while pods it isolates may still run, however the queue or policy is deleted.
    metadata: {
      name: networkPolicyName(queue),
      namespace: queue.metadata.namespace ?? "",
      labels: labels(queue),
      ownerReferences: [owner(queue)],
      finalizers: [FINALIZER],
    },
    spec: {
      podSelector: { matchLabels: { [LABELS.queue]: queue.metadata.name ?? "", [LABELS.component]: "job" } },
      policyTypes: ["Ingress", "Egress"],
      ingress: [],
      egress,
    },
  };
}

/**
 * The proxy settings of a Restricted queue's job pods (empty otherwise), in both spellings tools read. Localhost, the
 * allowed destinations and the queue's `noProxy` bypass the proxy; everything else must go through it.
 */
export function proxyEnv(queue: BuildkiteQueue): { name: string; value: string }[] {
  const { network } = queue.spec;
  if (network.egress !== "Restricted" || !network.proxy) return [];
  const noProxy = [
    "localhost",
    "127.0.0.1",
    "::1",
    ...(network.allowedDestinations ?? []).map((d) => d.cidr),
    ...(network.proxy.noProxy ?? []),
  ].join(",");
  const url = network.proxy.url;
  return [
    { name: "HTTPS_PROXY", value: url },
    { name: "https_proxy", value: url },
    { name: "HTTP_PROXY", value: url },
    { name: "http_proxy", value: url },
    { name: "NO_PROXY", value: noProxy },
    { name: "no_proxy", value: noProxy },
  ];
}

/**
 * The cache claims a job's pod mounts: one ReadWriteOnce claim per cache volume, for the job's scope (pipeline, or
 * pipeline and branch) and slot, owned by the queue. The job controller creates them just before the pod.
 */
export function desiredCacheClaims(queue: BuildkiteQueue, job: BuildkiteJob, slot: number): V1PersistentVolumeClaim[] {
  return (queue.spec.cache ?? []).map((cache): V1PersistentVolumeClaim => {
    const scope = cacheScope(queue, cache, job);
    return {
      apiVersion: "v1",
      kind: "PersistentVolumeClaim",
      metadata: {
        name: cacheClaimName(queue, cache.name, scope, slot),
        namespace: queue.metadata.namespace ?? "",
        labels: {
          ...labels(queue),
          [LABELS.slot]: String(slot),
          [LABELS.cache]: cache.name,
          [LABELS.cacheScope]: scope.key,
        },
        annotations: {
          [ANNOTATIONS.pipeline]: scope.pipeline,
          ...(scope.branch !== undefined ? { [ANNOTATIONS.branch]: scope.branch } : {}),
        },
        ownerReferences: [owner(queue)],
      },
      spec: {
        accessModes: ["ReadWriteOnce"],
        resources: { requests: { storage: cache.size } },
        ...(cache.storageClassName ? { storageClassName: cache.storageClassName } : {}),
      },
    };
  });
}
