import { LOG_LEVELS, type LogLevel } from "../observability/logger.js";
import {
  BUILDKITE_AGENT_ENDPOINT,
  ConfigError,
  DEFAULT_CLUSTER_DNS,
  FLAGS,
  readFlags,
  type FlagName,
} from "./flags.js";

export { BUILDKITE_AGENT_ENDPOINT, ConfigError, DEFAULT_CLUSTER_DNS } from "./flags.js";

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
  /** Agent API endpoints a queue's `spec.endpoint` may name: the operator sends agent tokens nowhere else. */
  allowedEndpoints: string[];
  /** The resolvers job pods may query when a queue names none (`spec.network.dns`). */
  clusterDNS: DnsPeer;
  /** Namespaces whose queues the operator serves (and the only ones it watches); empty: every namespace. */
  watchNamespaces: string[];
}

/** Pods that answer DNS, by the labels of their namespace and their own. */
export interface DnsPeer {
  namespaceSelector: Record<string, string>;
  podSelector: Record<string, string>;
}

/** An endpoint in the one spelling used to compare it with the allowed ones (no trailing slash). */
export const normalizeEndpoint = (url: string): string => url.trim().replace(/\/+$/, "");

/** Parses `namespace/key=value[,key=value]` (e.g. `kube-system/k8s-app=kube-dns`) into label selectors. */
export function parseDnsPeer(value: string): DnsPeer {
  const slash = value.indexOf("/");
  const namespace = value.slice(0, slash);
  const labels = value
    .slice(slash + 1)
    .split(",")
    .map((pair) => pair.split("="));
  const label = /^([a-z0-9.-]+\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
  if (
    slash <= 0 ||
    !isName(namespace) ||
    labels.some((kv) => kv.length !== 2 || !label.test(kv[0] ?? "") || !/^[-A-Za-z0-9_.]{0,63}$/.test(kv[1] ?? ""))
  ) {
    throw new ConfigError(
      `--cluster-dns must look like <namespace>/<label>=<value>[,<label>=<value>], e.g. ${DEFAULT_CLUSTER_DNS}, got "${value}"`,
    );
  }
  return {
    namespaceSelector: { "kubernetes.io/metadata.name": namespace },
    podSelector: Object.fromEntries(labels.map(([k, v]) => [k ?? "", v ?? ""])),
  };
}

const isName = (value: string): boolean => /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(value);

/** Numeric flags and the fields they set; defaults and ranges are in {@link FLAGS}. */
const NUMBERS = [
  ["workers", "workers"],
  ["poll-interval-ms", "pollIntervalMs"],
  ["state-check-interval-ms", "stateCheckIntervalMs"],
  ["reservation-expiry-seconds", "reservationExpirySeconds"],
  ["pending-timeout-seconds", "pendingTimeoutSeconds"],
  ["start-grace-seconds", "startGraceSeconds"],
  ["http-port", "httpPort"],
  ["lease-duration-seconds", "leaseDurationSeconds"],
  ["credentials-recheck-seconds", "credentialsRecheckSeconds"],
] as const satisfies readonly (readonly [FlagName, keyof OperatorConfig])[];

const isLogLevel = (value: string): value is LogLevel => (LOG_LEVELS as readonly string[]).includes(value);

/**
 * Parses `--flag=value` / `--flag value` arguments (see {@link FLAGS}; `--help` is main's to answer), falling back to
 * `BK_OPERATOR_*` environment variables. Throws {@link ConfigError} on anything it does not understand: failing fast
 * beats a half-configured operator.
 */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): OperatorConfig {
  const flag = readFlags(argv, env);
  const logLevel = flag("log-level") ?? FLAGS["log-level"].default;
  if (!isLogLevel(logLevel)) {
    throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(", ")}, got "${logLevel}"`);
  }
  const leaderElect = flag("leader-elect") ?? FLAGS["leader-elect"].default;
  if (leaderElect !== "true" && leaderElect !== "false")
    throw new ConfigError(`--leader-elect must be true or false, got "${leaderElect}"`);
  const leaseNamespace = flag("lease-namespace") ?? env.POD_NAMESPACE ?? "default";
  const leaseName = flag("lease-name") ?? FLAGS["lease-name"].default;
  for (const [name, value] of [
    ["lease-namespace", leaseNamespace],
    ["lease-name", leaseName],
  ] as const) {
    if (!/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(value))
      throw new ConfigError(
        `--${name} must be a Kubernetes name (lowercase letters, digits, "-" and "."), got "${value}"`,
      );
  }
  const config: OperatorConfig = {
    logLevel,
    workers: 16,
    pollIntervalMs: 0,
    stateCheckIntervalMs: 0,
    reservationExpirySeconds: 0,
    pendingTimeoutSeconds: 0,
    startGraceSeconds: 0,
    httpPort: 8080,
    leaderElect: leaderElect === "true",
    leaseNamespace,
    leaseName,
    leaseDurationSeconds: 15,
    credentialsRecheckSeconds: 300,
    allowedEndpoints: list(flag("allowed-endpoints") ?? BUILDKITE_AGENT_ENDPOINT).map(normalizeEndpoint),
    clusterDNS: parseDnsPeer(flag("cluster-dns") ?? DEFAULT_CLUSTER_DNS),
    watchNamespaces: list(flag("watch-namespaces") ?? ""),
  };
  for (const endpoint of config.allowedEndpoints) {
    if (!/^https?:\/\/[^\s/]+(\/.*)?$/.test(endpoint))
      throw new ConfigError(
        `--allowed-endpoints must be a comma-separated list of http(s) URLs such as ${BUILDKITE_AGENT_ENDPOINT}, got "${endpoint}"`,
      );
  }
  if (config.allowedEndpoints.length === 0)
    throw new ConfigError(`--allowed-endpoints may not be empty; the default is ${BUILDKITE_AGENT_ENDPOINT}`);
  for (const ns of config.watchNamespaces) {
    if (!isName(ns))
      throw new ConfigError(`--watch-namespaces must be a comma-separated list of namespace names, got "${ns}"`);
  }
  const sts = flag("sts-endpoint");
  if (sts !== undefined) {
    if (!/^https?:\/\/[^\s/]+(\/.*)?$/.test(sts))
      throw new ConfigError(
        `--sts-endpoint must be an http(s) URL such as https://sts.us-east-1.amazonaws.com, got "${sts}"`,
      );
    config.stsEndpoint = sts;
  }
  for (const [name, field] of NUMBERS) {
    const {
      default: fallback,
      range: [min, max],
    } = FLAGS[name];
    const raw = flag(name);
    const value = raw === undefined ? fallback : Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new ConfigError(`--${name} must be a whole number from ${min} to ${max}, got "${raw ?? ""}"`);
    }
    config[field] = value;
  }
  const clusterId = flag("cluster-id");
  if (clusterId !== undefined) {
    if (!/^[A-Za-z0-9._-]{1,128}$/.test(clusterId))
      throw new ConfigError(`--cluster-id must be 1-128 letters, digits, ".", "_" or "-", got "${clusterId}"`);
    config.clusterId = clusterId;
  }
  return config;
}

/** A comma-separated flag value as a list, blanks dropped. */
function list(value: string): string[] {
  return value
    .split(",")
    .map((v) => v.trim())
    .filter((v) => v !== "");
}
