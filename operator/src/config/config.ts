import { LOG_LEVELS, type LogLevel } from "../observability/logger.js";

/** The operator's configuration, parsed once at start-up and passed down. */
export interface OperatorConfig {
  logLevel: LogLevel;
}

/** A flag or environment value the operator cannot run with; the message says what to fix. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

const isLogLevel = (value: string): value is LogLevel => (LOG_LEVELS as readonly string[]).includes(value);

/**
 * Parses `--flag=value` / `--flag value` arguments, falling back to `BK_OPERATOR_*` environment variables.
 * Throws {@link ConfigError} on anything it does not understand: failing fast beats a half-configured operator.
 */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): OperatorConfig {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (!arg.startsWith("--")) throw new ConfigError(`unexpected argument "${arg}"; flags look like --log-level=info`);
    const eq = arg.indexOf("=");
    if (eq > 0) {
      flags.set(arg.slice(2, eq), arg.slice(eq + 1));
    } else {
      const value = argv[i + 1];
      if (value === undefined || value.startsWith("--")) throw new ConfigError(`flag ${arg} needs a value`);
      flags.set(arg.slice(2), value);
      i++;
    }
  }
  const known = new Set(["log-level"]);
  for (const name of flags.keys()) {
    if (!known.has(name)) throw new ConfigError(`unknown flag --${name}; known flags: ${[...known].map((k) => `--${k}`).join(", ")}`);
  }
  const logLevel = flags.get("log-level") ?? env.BK_OPERATOR_LOG_LEVEL ?? "info";
  if (!isLogLevel(logLevel)) {
    throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(", ")}, got "${logLevel}"`);
  }
  return { logLevel };
}
