import { parseArgs } from "node:util";

/** A flag or environment value the operator cannot run with; the message says what to fix. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/** Buildkite's agent API: the only endpoint agent tokens go to unless the operator is configured otherwise. */
export const BUILDKITE_AGENT_ENDPOINT = "https://agent.buildkite.com/v3";
/** The cluster DNS of most distributions: the kube-dns (or CoreDNS, same label) pods of kube-system. */
export const DEFAULT_CLUSTER_DNS = "kube-system/k8s-app=kube-dns";

/** What `--help` says about a flag; numeric flags also carry the range {@link parseConfig} enforces. */
interface FlagSpec {
  /** Placeholder for the value in `--help`. */
  readonly value: string;
  /** The default as `--help` shows it; numeric flags hold the number itself. */
  readonly default: string | number;
  readonly meaning: string;
  readonly range?: readonly [min: number, max: number];
}

/**
 * Every flag the operator takes. Each may also be set by its environment variable ({@link envName}); the flag wins.
 * This table drives both the parser and `--help`, so the two cannot disagree.
 */
export const FLAGS = {
  "log-level": { value: "error|warn|info|debug", default: "info", meaning: "Log verbosity." },
  "cluster-id": {
    value: "id",
    default: "the kube-system namespace's uid",
    meaning: "Identifies this cluster in Buildkite stack keys: 1-128 letters, digits, '.', '_' or '-'.",
  },
  workers: { value: "n", default: 16, range: [1, 64], meaning: "Concurrent reconciles per controller." },
  "poll-interval-ms": {
    value: "ms",
    default: 1_000,
    range: [100, 60_000],
    meaning:
      "How often each queue asks Buildkite for scheduled jobs when none are waiting (every 250 ms while some are).",
  },
  "state-check-interval-ms": {
    value: "ms",
    default: 5_000,
    range: [100, 300_000],
    meaning: "How often each queue reads the Buildkite states of its jobs.",
  },
  "reservation-expiry-seconds": {
    value: "s",
    default: 900,
    range: [1, 3_600],
    meaning: "How long Buildkite holds a job reserved for this operator.",
  },
  "pending-timeout-seconds": {
    value: "s",
    default: 600,
    range: [1, 86_400],
    meaning: "A job whose pod has not started this long after its creation fails.",
  },
  "start-grace-seconds": {
    value: "s",
    default: 120,
    range: [1, 86_400],
    meaning: "A job whose agent image cannot be pulled, or container cannot be configured, fails after this long.",
  },
  "http-port": { value: "port", default: 8080, range: [0, 65_535], meaning: "Port of /healthz, /readyz and /metrics." },
  "leader-elect": {
    value: "true|false",
    default: "true",
    meaning: "Act only while holding the lease, so replicas can stand by.",
  },
  "lease-namespace": {
    value: "namespace",
    default: "$POD_NAMESPACE, else default",
    meaning: "Namespace of the leader lease.",
  },
  "lease-name": { value: "name", default: "buildkite-operator", meaning: "Name of the leader lease." },
  "lease-duration-seconds": {
    value: "s",
    default: 15,
    range: [2, 300],
    meaning: "How long the leader lease lasts unless renewed.",
  },
  "sts-endpoint": {
    value: "url",
    default: "each queue's regional STS endpoint",
    meaning: "STS endpoint of the AWS credentials preflight.",
  },
  "credentials-recheck-seconds": {
    value: "s",
    default: 300,
    range: [10, 86_400],
    meaning: "How often a queue's AWS credentials are checked again.",
  },
  "allowed-endpoints": {
    value: "url,...",
    default: BUILDKITE_AGENT_ENDPOINT,
    meaning: "Agent API endpoints a queue's spec.endpoint may name; agent tokens are sent nowhere else.",
  },
  "cluster-dns": {
    value: "namespace/label=value,...",
    default: DEFAULT_CLUSTER_DNS,
    meaning: "The DNS pods job pods may query when a queue names none (spec.network.dns).",
  },
  "watch-namespaces": {
    value: "namespace,...",
    default: "every namespace",
    meaning: "Namespaces whose queues the operator serves, and the only ones it watches.",
  },
} as const satisfies Record<string, FlagSpec>;

export type FlagName = keyof typeof FLAGS;

/** The environment variable standing in for a flag: `--poll-interval-ms` → `BK_OPERATOR_POLL_INTERVAL_MS`. */
export const envName = (flag: string): string => `BK_OPERATOR_${flag.toUpperCase().replace(/-/g, "_")}`;

const isFlagName = (name: string): name is FlagName => Object.hasOwn(FLAGS, name);

const PARSE_OPTIONS = {
  help: { type: "boolean" },
  ...Object.fromEntries(Object.keys(FLAGS).map((name) => [name, { type: "string" }])),
} as const satisfies Record<string, { type: "string" | "boolean" }>;

/**
 * Splits `argv` with Node's `parseArgs` into flag values (the last of a repeated flag wins) and whether `--help` was
 * asked for. Lenient mode and tokens, rather than strict mode, so each mistake gets a message that says what to fix.
 */
function tokenize(argv: readonly string[]): { values: Map<FlagName, string>; help: boolean } {
  const { tokens } = parseArgs({
    args: [...argv],
    options: PARSE_OPTIONS,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  const values = new Map<FlagName, string>();
  let help = false;
  for (const token of tokens) {
    const arg = argv[token.index] ?? "";
    if (token.kind !== "option" || !token.rawName.startsWith("--")) {
      throw new ConfigError(`unexpected argument "${arg}"; flags look like --log-level=info`);
    }
    if (token.name === "help") {
      if (token.value !== undefined) throw new ConfigError("flag --help takes no value");
      help = true;
    } else if (!isFlagName(token.name)) {
      const known = Object.keys(FLAGS)
        .map((k) => `--${k}`)
        .join(", ");
      throw new ConfigError(`unknown flag --${token.name}; known flags: ${known} (--help describes them)`);
    } else if (token.value === undefined || (!token.inlineValue && token.value.startsWith("--"))) {
      // parseArgs takes whatever follows as the value; a following flag means this one was given none.
      throw new ConfigError(`flag ${token.rawName} needs a value, e.g. ${token.rawName}=<value>`);
    } else {
      values.set(token.name, token.value);
    }
  }
  return { values, help };
}

/** Whether the command line asks for `--help`; other mistakes on it are left to {@link readFlags}. */
export function helpRequested(argv: readonly string[]): boolean {
  try {
    return tokenize(argv).help;
  } catch (err) {
    if (err instanceof ConfigError) return argv.includes("--help");
    throw err;
  }
}

/** Reads the command line; a flag's value is its argument, else its environment variable, else undefined. */
export function readFlags(argv: readonly string[], env: NodeJS.ProcessEnv): (flag: FlagName) => string | undefined {
  const { values } = tokenize(argv);
  return (flag) => values.get(flag) ?? env[envName(flag)];
}

/** The text of `--help`: every flag with its environment variable, default and meaning. */
export function usage(): string {
  const lines = [
    "Usage: buildkite-operator [--flag=value | --flag value]...",
    "",
    "Runs each Buildkite job in its own pod. Every flag may also be set by the environment variable shown; the",
    "flag wins. Ranges are inclusive.",
    "",
  ];
  for (const [name, spec] of Object.entries(FLAGS) as [FlagName, FlagSpec][]) {
    const range = spec.range === undefined ? "" : `, ${String(spec.range[0])} to ${String(spec.range[1])}`;
    lines.push(
      `  --${name}=<${spec.value}>`,
      `      ${spec.meaning}`,
      `      env ${envName(name)}; default: ${String(spec.default)}${range}`,
    );
  }
  lines.push("  --help", "      Prints this text and exits.");
  return `${lines.join("\n")}\n`;
}
