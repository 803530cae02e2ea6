import { join } from "node:path";
import { hackBinary, repoRoot } from "./binaries.js";
import { httpGet } from "./https-probe.js";
import type { ManagedProcess, ProcessGroup } from "./managed-process.js";
import { KWOK_NODE_ANNOTATION } from "./nodes.js";
import { freePort } from "./ports.js";

/** Annotation that makes a Running KWOK pod end with this exit code (see test/support/kwok/stages.yaml). */
export const KWOK_EXIT_CODE_ANNOTATION = "kwok.test/exit-code";

/** Starts the KWOK controller for nodes annotated `kwok.x-k8s.io/node=fake`, with the stages of `kwok/stages.yaml`. */
export async function startKwok(dir: string, group: ProcessGroup, kubeconfig: string): Promise<ManagedProcess> {
  const port = await freePort();
  const kwok = group.start({
    name: "kwok",
    binary: hackBinary("kwok"),
    logFile: join(dir, "kwok.log"),
    args: [
      `--kubeconfig=${kubeconfig}`,
      `--manage-nodes-with-annotation-selector=${KWOK_NODE_ANNOTATION}=fake`,
      `--config=${join(repoRoot, "test", "support", "kwok", "stages.yaml")}`,
      `--server-address=127.0.0.1:${port}`,
      // Leases keep nodes Ready cheaply; without them the node lifecycle controller would taint them NotReady.
      "--node-lease-duration-seconds=40",
      "--cidr=10.244.0.0/16",
    ],
  });
  await kwok.waitReady(async () => (await httpGet(`http://127.0.0.1:${port}/healthz`)).status === 200, 30_000);
  return kwok;
}
