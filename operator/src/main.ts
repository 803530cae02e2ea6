import { KubeConfig } from "@kubernetes/client-node";
import { Registry } from "prom-client";
import { ConfigError, parseConfig } from "./config/config.js";
import { helpRequested, usage } from "./config/flags.js";
import { hostname } from "node:os";
import { createLogger } from "./observability/logger.js";
import { HttpServer } from "./observability/server.js";
import { Operator } from "./operator.js";
import { armFaults } from "./fault-points.js";

/** Wiring only: configuration → logger → clients → controllers → graceful shutdown. */
async function main(): Promise<void> {
  if (helpRequested(process.argv.slice(2))) {
    // Nothing else is started yet, so returning ends the process with status 0.
    process.stdout.write(usage());
    return;
  }
  let config;
  try {
    config = parseConfig(process.argv.slice(2), process.env);
    // Tests only: a crash at a chosen moment (see fault-points.ts); unset in any deployment.
    armFaults(process.env.BK_OPERATOR_FAULTS);
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
  // Served from the start, so liveness holds while the caches fill and /readyz says what is still missing.
  const registry = new Registry();
  const started: { operator?: Operator } = {};
  const http = await HttpServer.start({
    port: config.httpPort,
    registry,
    notReady: () => (started.operator ? started.operator.notReady() : "starting: caches are filling"),
    logger,
  });
  const operator = await Operator.start({
    kubeConfig,
    logger,
    workers: config.workers,
    registry,
    allowedEndpoints: config.allowedEndpoints,
    clusterDNS: config.clusterDNS,
    watchNamespaces: config.watchNamespaces,
    buildkite: {
      pollIntervalMs: config.pollIntervalMs,
      stateCheckIntervalMs: config.stateCheckIntervalMs,
      reservationExpirySeconds: config.reservationExpirySeconds,
      ...(config.clusterId !== undefined ? { clusterId: config.clusterId } : {}),
    },
    timeouts: { pendingTimeoutSeconds: config.pendingTimeoutSeconds, startGraceSeconds: config.startGraceSeconds },
    credentials: {
      recheckIntervalMs: config.credentialsRecheckSeconds * 1000,
      ...(config.stsEndpoint !== undefined ? { stsEndpoint: config.stsEndpoint } : {}),
    },
    ...(config.leaderElect
      ? {
          leaderElection: {
            namespace: config.leaseNamespace,
            name: config.leaseName,
            identity: process.env.POD_NAME ?? `${hostname()}-${process.pid}`,
            leaseDurationMs: config.leaseDurationSeconds * 1000,
            // Exiting is the clean way back: the pod restarts and campaigns again with empty caches and no stale work.
            onLost: () => {
              logger.error("Lost the leader lease; exiting to restart clean");
              process.exit(1);
            },
          },
        }
      : {}),
  });
  started.operator = operator;
  const shutdown = (signal: NodeJS.Signals): void => {
    logger.info("Stopping operator", { signal });
    void Promise.all([operator.stop(), http.close()]).finally(() => {
      logger.info("Stopped operator", { signal });
      logger.on("finish", () => process.exit(0));
      logger.end();
    });
  };
  process.once("SIGTERM", shutdown);
  process.once("SIGINT", shutdown);
}

main().catch((err: unknown) => {
  process.stderr.write(`buildkite-operator: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
