import { readFileSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "../support/binaries.js";
import { run } from "./host.js";

/** A locally built image: its reference and the OCI archive `ctr images import` takes. */
export interface LocalImage {
  readonly ref: string;
  readonly tarball: string;
}

/** The images of the real node. */
export interface NodeImages {
  /** The sandbox image. */
  readonly pause: LocalImage;
  /** The queue's `agentImage`: Debian, git, ssh and the buildkite-agent. */
  readonly agent: LocalImage;
  /** A step's `image:`: the same Debian with {@link STEP_IMAGE_MARKER} in `/etc/bk-step-image`, no buildkite-agent. */
  readonly step: LocalImage;
  /** A sidecar: `bk-test-service`, HTTP on 127.0.0.1:8080 answering {@link SERVICE_MARKER}. */
  readonly service: LocalImage;
}

const NAMES = ["pause", "agent", "step", "service"] as const;

/** What `/etc/bk-step-image` of the step image holds (hack/images/step/bk-step-image), without its newline. */
export const STEP_IMAGE_MARKER = readFileSync(join(repoRoot, "hack", "images", "step", "bk-step-image"), "utf8").trim();

/** How every answer of the service image begins: `bk-test-service answered on <hostname>`. */
export const SERVICE_MARKER = "bk-test-service answered on";

/**
 * Builds (or finds in the cache) the node's images with `hack/images/build.sh`: the pause image, the agent image
 * (Debian from debootstrap + the buildkite-agent of hack/bin), the step image and the sidecar service. A cached run
 * takes well under a second.
 */
export async function buildImages(): Promise<NodeImages> {
  const out = await run("bash", [join(repoRoot, "hack", "images", "build.sh"), ...NAMES]);
  const images = new Map(
    out
      .trim()
      .split("\n")
      .map((line) => {
        const [name = "", ref = "", tarball = ""] = line.split(" ");
        return [name, { ref, tarball }] as const;
      }),
  );
  const [pause, agent, step, service] = NAMES.map((name) => images.get(name));
  if (!pause || !agent || !step || !service)
    throw new Error(`hack/images/build.sh printed no ${NAMES.filter((n) => !images.has(n)).join(", ")} image:\n${out}`);
  return { pause, agent, step, service };
}
