import type { V1ResourceRequirements } from "@kubernetes/client-node";
import { formatCpu, formatMemory, memoryBytes } from "../api/quantity.js";
import { shapeResources, type InstanceShape } from "../api/shapes.js";

/** CPU in millicores and memory in bytes. */
export interface Requests {
  cpu: number;
  memory: number;
}

const MI = 2 ** 20;

/**
 * What each role asks for inside the shape (docs/pod-layout.md, "Resources"): the agent and checkout a little each,
 * copy-agent a little (init containers run before the rest, so theirs do not add up), a sidecar its own or a default;
 * the command the rest, and never less than commandMinimum.
 */
export const ROLE_REQUESTS = {
  agent: { cpu: 100, memory: 128 * MI },
  checkout: { cpu: 100, memory: 128 * MI },
  copyAgent: { cpu: 100, memory: 64 * MI },
  sidecarDefault: { cpu: 100, memory: 128 * MI },
  commandMinimum: { cpu: 250, memory: 256 * MI },
} as const;

/** The shape as a total: millicores and bytes. */
export function shapeTotal(shape: InstanceShape): Requests {
  const r = shapeResources(shape);
  return { cpu: r.vcpu * 1000, memory: memoryBytes(r.memory) ?? 0 };
}

export const asResources = (r: Requests): { cpu: string; memory: string } => ({
  cpu: formatCpu(r.cpu),
  memory: formatMemory(r.memory),
});

/** Requests only: the container may use what the pod's limits leave. */
export const requestsOnly = (r: Requests): V1ResourceRequirements => ({ requests: asResources(r) });

/**
 * The command container's resources: by default it requests what the other containers leave of the shape and may use
 * all of it (limits = the shape), so the job sees its shape in its own cgroup; ephemeral storage, which pod-level
 * resources do not cover, is all the command's.
 */
export function commandResources(
  shape: InstanceShape,
  others: Requests,
  own: { requests: Requests; limits: Requests } | undefined,
): V1ResourceRequirements {
  const total = shapeTotal(shape);
  const disk = shapeResources(shape).disk;
  const requests = own?.requests ?? { cpu: total.cpu - others.cpu, memory: total.memory - others.memory };
  const limits = own?.limits ?? total;
  return {
    requests: { ...asResources(requests), "ephemeral-storage": disk },
    limits: { ...asResources(limits), "ephemeral-storage": disk },
  };
}

export const sum = (...rs: Requests[]): Requests =>
  rs.reduce((a, b) => ({ cpu: a.cpu + b.cpu, memory: a.memory + b.memory }), { cpu: 0, memory: 0 });
