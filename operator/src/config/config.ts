import { LOG_LEVELS, type LogLevel } from "../observability/logger.js";

/** The operator's configuration, parsed once at start-up and passed down. */
export interface OperatorConfig {
  logLevel: LogLevel;
  /** Identifies the cluster in Buildkite stack keys; default: the kube-system namespace's uid. */
  clusterId?: string;
  /** Concurrent reconciles per controller. */
  workers: number;
  pollIntervalMs: number;
  stateCheckIntervalMs: number;
  reservationExpirySeconds: number;
  pendingTimeoutSeconds: number;
  startGraceSeconds: number;
  /** Port of /healthz, /readyz and /metrics. */
  httpPort: number;
  /** Only the replica holding the lease acts. */
  leaderElect: boolean;
  leaseNamespace: string;
  leaseName: string;
  leaseDurationSeconds: number;
  /** STS endpoint for the credentials preflight; default: the regional endpoint of each queue's region. */
  stsEndpoint?: string;
  credentialsRecheckSeconds: number;
}

/** Numeric flags: name, field, default, minimum, maximum. */
const NUMBERS = [
  ["workers", "workers", 16, 1, 64],
  ["poll-interval-ms", "pollIntervalMs", 1_000, 100, 60_000],
  ["state-check-interval-ms", "stateCheckIntervalMs", 5_000, 100, 300_000],
  ["reservation-expiry-seconds", "reservationExpirySeconds", 900, 1, 3_600],
  ["pending-timeout-seconds", "pendingTimeoutSeconds", 600, 1, 86_400],
  ["start-grace-seconds", "startGraceSeconds", 120, 1, 86_400],
  ["http-port", "httpPort", 8080, 0, 65_535],
  ["lease-duration-seconds", "leaseDurationSeconds", 15, 2, 300],
  ["credentials-recheck-seconds", "credentialsRecheckSeconds", 300, 10, 86_400],
] as const;

const envName = (flag: string): string => `BK_OPERATOR_${flag.toUpperCase().replace(/-/g, "_")}`;

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
      if (value === undefined || value.startsWith("--")) throw new ConfigError(`flag ${arg} needs a value, e.g. ${arg}=<value>`);
      flags.set(arg.slice(2), value);
      i++;
    }
  }
  const known = new Set(["log-level", "cluster-id", "sts-endpoint", "leader-elect", "lease-namespace", "lease-name", ...NUMBERS.map(([flag]) => flag)]);
  for (const name of flags.keys()) {
    if (!known.has(name)) throw new ConfigError(`unknown flag --${name}; known flags: ${[...known].map((k) => `--${k}`).join(", ")}`);
  }
  const logLevel = flags.get("log-level") ?? env.BK_OPERATOR_LOG_LEVEL ?? "info";
  if (!isLogLevel(logLevel)) {
    throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(", ")}, got "${logLevel}"`);
  }
  const leaderElect = flags.get("leader-elect") ?? env[envName("leader-elect")] ?? "true";
  if (leaderElect !== "true" && leaderElect !== "false") throw new ConfigError(`--leader-elect must be true or false, got "${leaderElect}"`);
  const leaseNamespace = flags.get("lease-namespace") ?? env[envName("lease-namespace")] ?? env.POD_NAMESPACE ?? "default";
  const leaseName = flags.get("lease-name") ?? env[envName("lease-name")] ?? "buildkite-operator";
  for (const [flag, value] of [["lease-namespace", leaseNamespace], ["lease-name", leaseName]] as const) {
    if (!/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(value)) throw new ConfigError(`--${flag} must be a Kubernetes name (lowercase letters, digits, "-" and "."), got "${value}"`);
  }
  const config: OperatorConfig = {
    logLevel, workers: 16, pollIntervalMs: 0, stateCheckIntervalMs: 0, reservationExpirySeconds: 0, pendingTimeoutSeconds: 0, startGraceSeconds: 0,
    httpPort: 8080, leaderElect: leaderElect === "true", leaseNamespace, leaseName, leaseDurationSeconds: 15, credentialsRecheckSeconds: 300,
  };
  const sts = flags.get("sts-endpoint") ?? env[envName("sts-endpoint")];
  if (sts !== undefined) {
    if (!/^https?:\/\/[^\s/]+(\/.*)?$/.test(sts)) throw new ConfigError(`--sts-endpoint must be an http(s) URL such as https://sts.us-east-1.amazonaws.com, got "${sts}"`);
    config.stsEndpoint = sts;
  }
  for (const [flag, field, fallback, min, max] of NUMBERS) {
    const raw = flags.get(flag) ?? env[envName(flag)];
    const value = raw === undefined ? fallback : Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new ConfigError(`--${flag} must be a whole number from ${min} to ${max}, got "${raw ?? ""}"`);
    }
    config[field] = value;
  }
  const clusterId = flags.get("cluster-id") ?? env[envName("cluster-id")];
  if (clusterId !== undefined) {
    if (!/^[A-Za-z0-9._-]{1,128}$/.test(clusterId)) throw new ConfigError(`--cluster-id must be 1-128 letters, digits, ".", "_" or "-", got "${clusterId}"`);
    config.clusterId = clusterId;
  }
  return config;
}
