import { KubeConfig } from "@kubernetes/client-node";
import { ConfigError, parseConfig } from "./config/config.js";
import { createLogger } from "./observability/logger.js";
import { Operator } from "./operator.js";

/** Wiring only: configuration → logger → clients → controllers → graceful shutdown. */
async function main(): Promise<void> {
  let config;
  try {
    config = parseConfig(process.argv.slice(2), process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`buildkite-operator: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel);
  logger.info("Started operator", { version: process.env.npm_package_version ?? "dev", pid: process.pid });
  // In a pod: the ServiceAccount's token; elsewhere: $KUBECONFIG or ~/.kube/config.
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromDefault();
  const operator = await Operator.start({
    kubeConfig, logger, workers: config.workers,
    buildkite: {
      pollIntervalMs: config.pollIntervalMs, stateCheckIntervalMs: config.stateCheckIntervalMs, reservationExpirySeconds: config.reservationExpirySeconds,
      ...(config.clusterId !== undefined ? { clusterId: config.clusterId } : {}),
    },
    timeouts: { pendingTimeoutSeconds: config.pendingTimeoutSeconds, startGraceSeconds: config.startGraceSeconds },
  });
  const shutdown = (signal: NodeJS.Signals): void => {
    logger.info("Stopping operator", { signal });
    void operator.stop().finally(() => {
      logger.info("Stopped operator", { signal });
      logger.on("finish", () => process.exit(0));
      logger.end();
    });
  };
  process.once("SIGTERM", shutdown);
  process.once("SIGINT", shutdown);
}

main().catch((err: unknown) => {
  process.stderr.write(`buildkite-operator: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
