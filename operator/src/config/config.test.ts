import { expect } from "chai";
import { ConfigError, parseConfig } from "./config.js";
import { FLAGS, envName, helpRequested, usage } from "./flags.js";

describe("parseConfig", () => {
  it("defaults the log level to info", () => {
    expect(parseConfig([], {}).logLevel).to.equal("info");
  });
  it("reads --log-level in both flag forms and from the environment", () => {
    expect(parseConfig(["--log-level=debug"], {}).logLevel).to.equal("debug");
    expect(parseConfig(["--log-level", "warn"], {}).logLevel).to.equal("warn");
    expect(parseConfig([], { BK_OPERATOR_LOG_LEVEL: "error" }).logLevel).to.equal("error");
  });
  it("names the fix for a bad level, an unknown flag and a missing value", () => {
    expect(() => parseConfig(["--log-level=loud"], {})).to.throw(
      ConfigError,
      /must be one of error, warn, info, debug/,
    );
    expect(() => parseConfig(["--verbose=1"], {})).to.throw(
      ConfigError,
      /unknown flag --verbose; known flags: --log-level/,
    );
    expect(() => parseConfig(["--log-level"], {})).to.throw(ConfigError, /needs a value/);
    expect(() => parseConfig(["stray"], {})).to.throw(ConfigError, /unexpected argument "stray"/);
  });

  it("reads the Buildkite and timeout settings with their defaults, from flags or the environment", () => {
    expect(parseConfig([], {})).to.deep.include({
      workers: 16,
      pollIntervalMs: 1000,
      stateCheckIntervalMs: 5000,
      reservationExpirySeconds: 900,
      pendingTimeoutSeconds: 600,
      startGraceSeconds: 120,
    });
    const c = parseConfig(["--poll-interval-ms=250", "--cluster-id", "prod-eu"], {
      BK_OPERATOR_PENDING_TIMEOUT_SECONDS: "30",
    });
    expect(c).to.deep.include({ pollIntervalMs: 250, clusterId: "prod-eu", pendingTimeoutSeconds: 30 });
  });

  it("refuses numbers out of range and cluster ids Buildkite would not accept, saying what is allowed", () => {
    expect(() => parseConfig(["--reservation-expiry-seconds=7200"], {})).to.throw(
      ConfigError,
      '--reservation-expiry-seconds must be a whole number from 1 to 3600, got "7200"',
    );
    expect(() => parseConfig(["--poll-interval-ms=fast"], {})).to.throw(ConfigError, "from 100 to 60000");
    expect(() => parseConfig(["--cluster-id=a b"], {})).to.throw(ConfigError, "--cluster-id must be");
  });

  it("sends tokens only to Buildkite unless told otherwise, allows DNS to kube-dns, and watches every namespace by default", () => {
    expect(parseConfig([], {})).to.deep.include({
      allowedEndpoints: ["https://agent.buildkite.com/v3"],
      watchNamespaces: [],
      clusterDNS: {
        namespaceSelector: { "kubernetes.io/metadata.name": "kube-system" },
        podSelector: { "k8s-app": "kube-dns" },
      },
    });
    const c = parseConfig(
      [
        "--allowed-endpoints=https://agent.buildkite.com/v3/, http://bk.internal:8080/v3",
        "--cluster-dns=dns/app=coredns,tier=node",
        "--watch-namespaces=ci,ci-arm",
      ],
      {},
    );
    expect(c).to.deep.include({
      allowedEndpoints: ["https://agent.buildkite.com/v3", "http://bk.internal:8080/v3"],
      watchNamespaces: ["ci", "ci-arm"],
      clusterDNS: {
        namespaceSelector: { "kubernetes.io/metadata.name": "dns" },
        podSelector: { app: "coredns", tier: "node" },
      },
    });
    expect(() => parseConfig(["--cluster-dns=kube-dns"], {})).to.throw(
      ConfigError,
      "--cluster-dns must look like <namespace>/<label>=<value>",
    );
    expect(() => parseConfig(["--allowed-endpoints=agent.buildkite.com"], {})).to.throw(
      ConfigError,
      "--allowed-endpoints must be a comma-separated list of http(s) URLs",
    );
    expect(() => parseConfig(["--watch-namespaces=CI"], {})).to.throw(ConfigError, "--watch-namespaces must be");
  });

  it("says what to fix for an unknown flag, a flag without a value and a short flag", () => {
    expect(() => parseConfig(["--worker=4"], {})).to.throw(
      ConfigError,
      /^unknown flag --worker; known flags: .*--workers.*\(--help describes them\)$/,
    );
    expect(() => parseConfig(["--workers", "--log-level=debug"], {})).to.throw(
      ConfigError,
      "flag --workers needs a value, e.g. --workers=<value>",
    );
    expect(() => parseConfig(["-w", "4"], {})).to.throw(
      ConfigError,
      'unexpected argument "-w"; flags look like --log-level=info',
    );
    expect(() => parseConfig(["--help=yes"], {})).to.throw(ConfigError, "flag --help takes no value");
  });

  it("lets the last of a repeated flag win, and a flag win over its environment variable", () => {
    expect(parseConfig(["--workers=4", "--workers", "8"], { BK_OPERATOR_WORKERS: "2" }).workers).to.equal(8);
    expect(parseConfig([], { BK_OPERATOR_WORKERS: "2" }).workers).to.equal(2);
    expect(parseConfig([], { POD_NAMESPACE: "ops" }).leaseNamespace).to.equal("ops");
  });
});

describe("--help", () => {
  it("is asked for even beside flags the parser would refuse", () => {
    expect(helpRequested(["--help"])).to.equal(true);
    expect(helpRequested(["--workers=0", "--verbose", "--help"])).to.equal(true);
    expect(helpRequested(["--workers=4"])).to.equal(false);
    expect(parseConfig(["--help"], {}).workers).to.equal(16);
  });

  it("lists every flag with its environment variable, default and meaning", () => {
    const text = usage();
    for (const [name, spec] of Object.entries(FLAGS)) {
      expect(text).to.include(`--${name}=<`);
      expect(text).to.include(`env ${envName(name)}; default: ${String(spec.default)}`);
      expect(text).to.include(spec.meaning);
    }
    expect(text).to.include("env BK_OPERATOR_WORKERS; default: 16, 1 to 64");
  });
});
