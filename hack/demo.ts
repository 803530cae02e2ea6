import { LocalCluster } from "../test/support/cluster.js";
import { hackBinary } from "../test/support/binaries.js";

/**
 * `npm run demo`: starts the local cluster (real control plane, KWOK nodes of both architectures) and keeps it up
 * until Ctrl-C, printing how to point kubectl at it.
 */
async function main(): Promise<void> {
  const cluster = await LocalCluster.start({ log: (line) => { console.log(line); } });
  const kubectl = hackBinary("kubectl");
  console.log(`
The local cluster is up. In another terminal:

  export KUBECONFIG=${cluster.kubeconfigPath}
  ${kubectl} get nodes -L kubernetes.io/arch

Press Ctrl-C to stop it; every process and file it made goes away.`);
  // Ctrl-C is handled by the process supervisor (test/support/managed-process.ts): it kills the components and
  // removes the cluster's directory before exiting.
  await new Promise<never>(() => undefined);
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
