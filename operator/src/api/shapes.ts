import type { BuildkiteQueueSpec } from "./generated/buildkite-queue.js";

/** A hosted-agent instance shape name, e.g. `LINUX_ARM64_4X16`. */
export type InstanceShape = BuildkiteQueueSpec["instanceShape"];
export type Arch = "amd64" | "arm64";

/** What a shape means for a pod: vCPU, memory and disk as Kubernetes quantities, and the node architecture. */
export interface ShapeResources {
  arch: Arch;
  vcpu: number;
  /** Memory in GB as Buildkite states it, as a Kubernetes quantity (binary units, like the hosted machines). */
  memory: string;
  /** Disk in GB, as `ephemeral-storage` (decimal units, as Buildkite states disk sizes). */
  disk: string;
}

/**
 * Buildkite hosted Linux shapes (vCPU / memory GB / disk GB): 2X4 = 2/4/47, 4X16 = 4/16/95, 8X32 = 8/32/158,
 * 16X64 = 16/64/284, 32X128 = 32/128/544, 64X256 = 64/256/1056. Both architectures share the sizes.
 */
const SIZES: Readonly<Record<string, { vcpu: number; memoryGi: number; diskG: number }>> = {
  "2X4": { vcpu: 2, memoryGi: 4, diskG: 47 },
  "4X16": { vcpu: 4, memoryGi: 16, diskG: 95 },
  "8X32": { vcpu: 8, memoryGi: 32, diskG: 158 },
  "16X64": { vcpu: 16, memoryGi: 64, diskG: 284 },
  "32X128": { vcpu: 32, memoryGi: 128, diskG: 544 },
  "64X256": { vcpu: 64, memoryGi: 256, diskG: 1056 },
};

/** The resources of a shape. Throws for a name outside the CRD's enum (the API server refuses those first). */
export function shapeResources(shape: InstanceShape): ShapeResources {
  const match = /^LINUX_(AMD64|ARM64)_(\d+X\d+)$/.exec(shape);
  const size = match?.[2] !== undefined ? SIZES[match[2]] : undefined;
  if (!match || !size) throw new Error(`unknown instance shape ${shape}`);
  return {
    arch: match[1] === "ARM64" ? "arm64" : "amd64",
    vcpu: size.vcpu,
    memory: `${size.memoryGi}Gi`,
    disk: `${size.diskG}G`,
  };
}

/** How many jobs of a queue may run at once: floor(maxVCPU / shape vCPU). */
export function concurrency(spec: Pick<BuildkiteQueueSpec, "maxVCPU" | "instanceShape">): number {
  return Math.floor(spec.maxVCPU / shapeResources(spec.instanceShape).vcpu);
}
