import { ConfigError, parseConfig } from "./config/config.js";
import { createLogger } from "./observability/logger.js";

/** Wiring only: configuration → logger → (controllers, servers) → graceful shutdown. */
function main(): void {
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
  const keepAlive = setInterval(() => undefined, 1 << 30);
  const shutdown = (signal: NodeJS.Signals): void => {
    logger.info("Stopped operator", { signal });
    clearInterval(keepAlive);
    logger.on("finish", () => process.exit(0));
    logger.end();
  };
  process.once("SIGTERM", shutdown);
  process.once("SIGINT", shutdown);
}

main();
