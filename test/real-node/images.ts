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
  readonly pause: LocalImage;
  readonly agent: LocalImage;
}

/**
 * Builds (or finds in the cache) the node's images with `hack/images/build.sh`: the pause image and the agent image
 * (Debian from debootstrap + the buildkite-agent of hack/bin). A cached run takes well under a second.
 */
export async function buildImages(): Promise<NodeImages> {
  const out = await run("bash", [join(repoRoot, "hack", "images", "build.sh"), "pause", "agent"]);
  const images = new Map(
    out
      .trim()
      .split("\n")
      .map((line) => {
        const [name = "", ref = "", tarball = ""] = line.split(" ");
        return [name, { ref, tarball }] as const;
      }),
  );
  const pause = images.get("pause");
  const agent = images.get("agent");
  if (!pause || !agent) throw new Error(`hack/images/build.sh printed no pause and agent images:\n${out}`);
  return { pause, agent };
}
