import type { KubeConfig } from "@kubernetes/client-node";
import { createWriteStream } from "node:fs";
import { join } from "node:path";
import { createLogger } from "../../operator/src/observability/logger.js";
import { Operator } from "../../operator/src/operator.js";
import { testCluster } from "./global-cluster.js";

/**
 * Runs the operator in-process against the test cluster, as `main.ts` would, logging JSON to `operator-<name>.log`
 * in the cluster's directory (kept with BK_KEEP_CLUSTER=1). Stop it in `after`.
 */
export async function startTestOperator(kc: KubeConfig, name: string): Promise<Operator> {
  const stream = createWriteStream(join(testCluster().dir, `operator-${name}.log`), { flags: "a" });
  const logger = createLogger("debug", stream);
  return Operator.start({ kubeConfig: kc, logger, syncTimeoutMs: 20_000 });
}
