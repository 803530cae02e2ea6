import type { V1NetworkPolicy, V1NetworkPolicyEgressRule, V1OwnerReference, V1PersistentVolumeClaim, V1ServiceAccount } from "@kubernetes/client-node";
import { ANNOTATIONS, LABELS, MANAGED_BY } from "../api/keys.js";
import { cacheClaimName, networkPolicyName, serviceAccountName } from "../api/names.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";

/** Cloud metadata endpoints (AWS IMDS v4/v6, ECS task metadata and credentials, EKS Pod Identity) a job never reaches. */
export const METADATA_CIDRS_V4 = ["169.254.169.254/32", "169.254.170.2/32", "169.254.170.23/32"] as const;
export const METADATA_CIDRS_V6 = ["fd00:ec2::254/128", "fd00:ec2::23/128"] as const;

const owner = (queue: BuildkiteQueue): V1OwnerReference => ({
  apiVersion: queue.apiVersion, kind: queue.kind, name: queue.metadata.name ?? "", uid: queue.metadata.uid ?? "",
  controller: true, blockOwnerDeletion: true,
});

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

/**
 * The NetworkPolicy of a queue's job pods: no ingress at all; egress to DNS, and (mode Internet) to every address
 * except the cloud metadata endpoints (unless `denyMetadata: false`) and `extraDeniedCIDRs`.
 */
export function desiredNetworkPolicy(queue: BuildkiteQueue): V1NetworkPolicy {
  const { network } = queue.spec;
  const extra = network.extraDeniedCIDRs ?? [];
  const deniedV4 = [...(network.denyMetadata ? METADATA_CIDRS_V4 : []), ...extra.filter((c) => !c.includes(":"))];
  const deniedV6 = [...(network.denyMetadata ? METADATA_CIDRS_V6 : []), ...extra.filter((c) => c.includes(":"))];
  const block = (cidr: string, except: string[]) => ({ ipBlock: { cidr, ...(except.length > 0 ? { except } : {}) } });
  const egress: V1NetworkPolicyEgressRule[] = [
    // DNS to any resolver (cluster DNS, node-local caches); port 53 only.
    { ports: [{ protocol: "UDP", port: 53 }, { protocol: "TCP", port: 53 }] },
  ];
  if (network.egress === "Internet") egress.push({ to: [block("0.0.0.0/0", deniedV4), block("::/0", deniedV6)] });
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    metadata: { name: networkPolicyName(queue), namespace: queue.metadata.namespace ?? "", labels: labels(queue), ownerReferences: [owner(queue)] },
    spec: {
      podSelector: { matchLabels: { [LABELS.queue]: queue.metadata.name ?? "", [LABELS.component]: "job" } },
      policyTypes: ["Ingress", "Egress"],
      ingress: [],
      egress,
    },
  };
}

/** One ReadWriteOnce claim per cache volume and concurrency slot, so each concurrent job has its own. */
export function desiredCacheClaims(queue: BuildkiteQueue, concurrency: number): V1PersistentVolumeClaim[] {
  return (queue.spec.cache ?? []).flatMap((cache) =>
    Array.from({ length: concurrency }, (_, slot): V1PersistentVolumeClaim => ({
      apiVersion: "v1",
      kind: "PersistentVolumeClaim",
      metadata: {
        name: cacheClaimName(queue, cache.name, slot),
        namespace: queue.metadata.namespace ?? "",
        labels: { ...labels(queue), [LABELS.slot]: String(slot) },
        ownerReferences: [owner(queue)],
      },
      spec: {
        accessModes: ["ReadWriteOnce"],
        resources: { requests: { storage: cache.size } },
        ...(cache.storageClassName ? { storageClassName: cache.storageClassName } : {}),
      },
    })));
}
