import { PatchStrategy, setHeaderOptions, type CoreV1Api, type V1Node } from "@kubernetes/client-node";

/** One architecture's fake nodes and the capacity of each. */
export interface NodePoolSpec {
  arch: "amd64" | "arm64";
  count: number;
  cpu: string;
  memory: string;
  ephemeralStorage: string;
  pods: string;
}

/** Default: two nodes of each architecture, each 16 vCPU / 64 GiB / 300 GB disk, like a mid-size cloud instance. */
export const DEFAULT_NODE_POOLS: readonly NodePoolSpec[] = [
  { arch: "amd64", count: 2, cpu: "16", memory: "64Gi", ephemeralStorage: "300G", pods: "110" },
  { arch: "arm64", count: 2, cpu: "16", memory: "64Gi", ephemeralStorage: "300G", pods: "110" },
];

/** Annotation KWOK selects the nodes it plays with (`--manage-nodes-with-annotation-selector`). */
export const KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node";

/** The Node object of a KWOK node; KWOK then keeps it Ready and runs the pods bound to it through its stages. */
export function kwokNode(name: string, pool: NodePoolSpec): V1Node {
  const capacity = { cpu: pool.cpu, memory: pool.memory, "ephemeral-storage": pool.ephemeralStorage, pods: pool.pods };
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      annotations: { [KWOK_NODE_ANNOTATION]: "fake", "node.alpha.kubernetes.io/ttl": "0" },
      labels: {
        "kubernetes.io/arch": pool.arch,
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "node-role.kubernetes.io/agent": "",
        type: "kwok",
      },
    },
    spec: {},
    status: { capacity, allocatable: capacity },
  };
}

/** Registers the KWOK nodes of every pool (`kwok-<arch>-<n>`) and returns their names. */
export async function registerNodes(core: CoreV1Api, pools: readonly NodePoolSpec[]): Promise<string[]> {
  const names: string[] = [];
  await Promise.all(
    pools.flatMap((pool) =>
      Array.from({ length: pool.count }, async (_, i) => {
        const name = `kwok-${pool.arch}-${i}`;
        names.push(name);
        const node = kwokNode(name, pool);
        await core.createNode({ body: node });
        // Status is a subresource: capacity set on create is dropped, so it is written separately (before KWOK starts,
        // whose node-initialize stage copies it).
        await core.patchNodeStatus(
          { name, body: { status: node.status } },
          setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
        );
      }),
    ),
  );
  return names.sort();
}
