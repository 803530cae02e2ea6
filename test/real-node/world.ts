import { LocalCluster } from "../support/cluster.js";
import type { NodePoolSpec } from "../support/nodes.js";
import { RealNode } from "../support/real-node.js";

/**
 * KWOK nodes of the real-node tier: arm64 only. A job pod's nodeSelector names only its architecture, and a queue has
 * no way to choose nodes beyond tolerations, so an amd64 job would otherwise be as welcome on a KWOK amd64 node as on
 * the real (amd64) one. The real node still registers next to KWOK nodes.
 */
export const REAL_NODE_TIER_POOLS: readonly NodePoolSpec[] = [
  { arch: "arm64", count: 1, cpu: "16", memory: "64Gi", ephemeralStorage: "300G", pods: "110" },
];

/** A local cluster with a real node, for one test file. */
export interface World {
  readonly cluster: LocalCluster;
  readonly node: RealNode;
}

export async function startWorld(): Promise<World> {
  const cluster = await LocalCluster.start({ nodePools: REAL_NODE_TIER_POOLS });
  try {
    return { cluster, node: await RealNode.start(cluster) };
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

/** Stops the node (which must happen first: it lives in the cluster's directory), then the cluster. */
export async function stopWorld(world: World | undefined): Promise<void> {
  if (!world) return;
  try {
    await world.node.stop();
  } finally {
    await world.cluster.stop();
  }
}

/**
 * Stops what a guarded test started, in the order the guards need: the scenario, the node, then the remote host (its
 * guards outlive the node, whose kube-router rewrites the table they are partly in), and the world last, whatever fails.
 */
export async function stopGuardedWorld(
  world: World | undefined,
  scenario: { stop(): Promise<void> } | undefined,
  remote: { stop(): Promise<void> } | undefined,
): Promise<void> {
  try {
    await scenario?.stop();
    await world?.node.stop();
  } finally {
    try {
      await remote?.stop();
    } finally {
      await stopWorld(world);
    }
  }
}
