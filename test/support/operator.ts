import type { KubeConfig } from "@kubernetes/client-node";
import { createWriteStream } from "node:fs";
import { join } from "node:path";
import { createLogger } from "../../operator/src/observability/logger.js";
import { Operator, type OperatorOptions } from "../../operator/src/operator.js";
import { testCluster } from "./global-cluster.js";

/**
 * Runs the operator in-process against the test cluster, as `main.ts` would, logging JSON to `operator-<name>.log`
 * in the cluster's directory (kept with BK_KEEP_CLUSTER=1). Stop it in `after`. Buildkite is off unless `options`
 * turn it on (a test of the Kubernetes side creates BuildkiteJobs itself).
 */
export async function startTestOperator(
  kc: KubeConfig,
  name: string,
  options: Partial<Omit<OperatorOptions, "kubeConfig" | "logger">> = {},
): Promise<Operator> {
  const stream = createWriteStream(join(testCluster().dir, `operator-${name}.log`), { flags: "a" });
  const logger = createLogger("debug", stream);
  return Operator.start({ kubeConfig: kc, logger, syncTimeoutMs: 20_000, buildkite: false, ...options });
}
