import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { repoRoot } from "../../test/support/binaries.js";
import { PEER_RELEASE, peerBinary } from "./peer-agent-stack-k8s.js";
import { runScenario, type Result, type Scenario } from "./run.js";
import { AGENT_STACK_K8S, OURS, type SystemUnderTest } from "./systems.js";

/**
 * `npm run bench -- [--jobs 5000] [--rate 50] [--seconds 30] [--inflight 10000] [--only burst,steady,inflight]
 * [--no-peer] [--out docs/benchmarks.md]`: runs each scenario on a fresh local cluster for this operator and, where
 * built, agent-stack-k8s, and writes both rows (and their ratio) to the results file. Every scenario is bounded.
 */
interface Options {
  jobs: number;
  rate: number;
  seconds: number;
  inflight: number;
  only: Set<string>;
  peer: boolean;
  out: string;
}

function parse(argv: readonly string[]): Options {
  const o: Options = {
    jobs: 5000,
    rate: 50,
    seconds: 30,
    inflight: 10_000,
    only: new Set(["burst", "steady", "inflight"]),
    peer: true,
    out: join(repoRoot, "docs", "benchmarks.md"),
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = (argv[i] ?? "").split("=", 2);
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag ?? ""} needs a value`);
      return v;
    };
    const count = (name: string): number => {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive whole number`);
      return n;
    };
    switch (flag) {
      case "--jobs":
        o.jobs = count("--jobs");
        break;
      case "--rate":
        o.rate = count("--rate");
        break;
      case "--seconds":
        o.seconds = count("--seconds");
        break;
      case "--inflight":
        o.inflight = count("--inflight");
        break;
      case "--only":
        o.only = new Set(value().split(","));
        break;
      case "--no-peer":
        o.peer = false;
        break;
      case "--out":
        o.out = value();
        break;
      default:
        throw new Error(`unknown flag ${flag ?? ""}; see hack/bench/bench.ts`);
    }
  }
  return o;
}

const ms = (n: number): string =>
  Number.isNaN(n) ? "–" : n < 1000 ? `${Math.round(n)} ms` : `${(n / 1000).toFixed(2)} s`;

function table(results: readonly Result[]): string {
  const head =
    "| System | Scenario | Jobs | Wall | Pods/s | sched→created p50 / p95 / p99 | sched→running p50 / p95 / p99 | Max RSS (heap used at end) | CPU | Buildkite calls/job | Kubernetes calls/job | Duplicates | Left over |";
  const rows = results.map(
    (r) =>
      `| ${r.system} | ${r.scenario} | ${r.jobs} | ${r.seconds.toFixed(1)} s | ${r.podsPerSecond.toFixed(1)} | ${r.createdMs.map(ms).join(" / ")} | ${r.runningMs.map(ms).join(" / ")} | ${r.maxRssMb.toFixed(0)} MB${r.heapUsedMb === undefined ? "" : ` (${r.heapUsedMb.toFixed(0)} MB)`} | ${r.cpuCores.toFixed(2)} cores | ${r.buildkiteCallsPerJob.toFixed(2)} | ${r.kubernetesCallsPerJob === undefined ? "not counted" : r.kubernetesCallsPerJob.toFixed(1)} | ${r.duplicates} | ${r.leftovers} |`,
  );
  return [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|", ...rows].join("\n");
}

function ratios(results: readonly Result[]): string[] {
  const lines: string[] = [];
  for (const ours of results.filter((r) => r.system === OURS.name)) {
    const peer = results.find((r) => r.system === AGENT_STACK_K8S.name && r.scenario === ours.scenario);
    if (!peer) continue;
    lines.push(
      `- ${ours.scenario}: pods/s ${(ours.podsPerSecond / peer.podsPerSecond).toFixed(2)}× agent-stack-k8s; p99 scheduled→created ${(peer.createdMs[2] / ours.createdMs[2]).toFixed(2)}× faster.`,
    );
  }
  return lines;
}

function machine(): string {
  const model = cpus()[0]?.model ?? "unknown CPU";
  const kube = (() => {
    try {
      return execFileSync(join(repoRoot, "hack/bin/kube-apiserver"), ["--version"], { encoding: "utf8" }).trim();
    } catch {
      return "kube-apiserver (version unknown)";
    }
  })();
  return `${cpus().length} × ${model}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}; ${kube}; agent-stack-k8s ${PEER_RELEASE}`;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const log = (line: string): void => {
    process.stderr.write(`${line}\n`);
  };
  const systems: SystemUnderTest[] = [OURS];
  if (o.peer) {
    if (peerBinary() === undefined)
      throw new Error(
        "agent-stack-k8s is not built: run `bash hack/build-binaries.sh --with-peers` (see hack/versions.env), or pass --no-peer",
      );
    systems.push(AGENT_STACK_K8S);
  }
  const scenarios: Scenario[] = [];
  if (o.only.has("burst")) scenarios.push({ kind: "burst", jobs: o.jobs });
  if (o.only.has("steady")) scenarios.push({ kind: "steady", rate: o.rate, seconds: o.seconds });
  const results: Result[] = [];
  for (const scenario of scenarios) {
    for (const system of systems) {
      const result = await runScenario(system, scenario, 20 * 60_000, log);
      log(JSON.stringify(result));
      results.push(result);
    }
  }
  if (o.only.has("inflight"))
    results.push(await runScenario(OURS, { kind: "inflight", jobs: o.inflight }, 20 * 60_000, log));
  const command = `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim();
  const body = [
    "# Benchmarks",
    "",
    `Measured ${new Date().toISOString().slice(0, 10)} on ${machine()}, control plane included (everything runs on this machine).`,
    "",
    `Command: \`${command}\``,
    "",
    "Each row runs on a fresh local cluster (real kube-apiserver, scheduler and controller-manager; 40 KWOK nodes) with a fake Buildkite.",
    "Pods are completed by the fast runner, which makes the agent's API calls (register, acquire, start, finish) for every",
    "system alike. Latencies run from the job's `scheduled_at` in Buildkite to the pod being seen created / Running by a watch.",
    "",
    table(results),
    "",
    ...ratios(results),
    "",
  ].join("\n");
  writeFileSync(o.out, body);
  log(`wrote ${o.out}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`benchmark: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
