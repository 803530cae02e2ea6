import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as prettier from "prettier";
import { cpus, loadavg, totalmem } from "node:os";
import { basename, dirname, join } from "node:path";
import { repoRoot } from "../../test/support/binaries.js";
import { PEER_RELEASE, peerBinary } from "./peer-agent-stack-k8s.js";
import { BARE_CONCURRENCY } from "./bare-pods.js";
import { podsCreatedChart } from "./chart-svg.js";
import { mainTable, memorySection, milestoneList, profileSection, scenarioSections, targets } from "./report.js";
import { BARE_PODS, describe, runBarePods, runScenario, type Result, type Scenario } from "./run.js";
import { AGENT_STACK_K8S, OURS, type SystemUnderTest } from "./systems.js";

/**
 * `npm run bench -- [--jobs 5000] [--rate 50] [--seconds 30] [--inflight 10000] [--only burst,steady,inflight]
 * [--no-peer] [--cpu-prof] [--by-client] [--out docs/benchmarks.md] [--render <results.json>] [--note <text>]`: runs each scenario on
 * fresh local clusters, first as bare pods (the ceiling), then for this operator and, unless --no-peer,
 * agent-stack-k8s, and writes the results file, one chart per scenario and the raw results (results.json) in a folder
 * named after it. `--cpu-prof` profiles the operator; `--by-client` turns on the API server's audit log to count
 * requests by client; the in-flight row takes heap snapshots. `--render` rewrites the results file from a saved
 * results.json; `--note` puts a line under the title. Every scenario is bounded.
 */
interface Options {
  jobs: number;
  rate: number;
  seconds: number;
  inflight: number;
  only: Set<string>;
  peer: boolean;
  out: string;
  cpuProfile: boolean;
  byClient: boolean;
  /** Re-renders the results file from a saved results.json instead of running. */
  render: string | undefined;
  /** A line put under the title (what kind of run this was, e.g. on a loaded machine). */
  note: string | undefined;
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
    cpuProfile: false,
    byClient: false,
    render: undefined,
    note: undefined,
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
      case "--cpu-prof":
        o.cpuProfile = true;
        break;
      case "--by-client":
        o.byClient = true;
        break;
      case "--render":
        o.render = value();
        break;
      case "--note":
        o.note = value();
        break;
      default:
        throw new Error(`unknown flag ${flag ?? ""}; see hack/bench/bench.ts`);
    }
  }
  return o;
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

/** One image per scenario, next to the results file: `<dir>/<results file's name>/<scenario>.svg`. */
function chartPath(out: string, scenario: string): { file: string; link: string } {
  const folder = basename(out, ".md");
  const name = `${scenario.replace(/[^a-z0-9]+/gi, "-").replace(/^-|-$/g, "")}.svg`;
  return { file: join(dirname(out), folder, name), link: `${folder}/${name}` };
}

function render(results: readonly Result[], command: string, header: string, out: string): string {
  for (const scenario of new Set(results.map((r) => r.scenario))) {
    const { file } = chartPath(out, scenario);
    mkdirSync(dirname(file), { recursive: true });
    const series = results
      .filter((r) => r.scenario === scenario)
      .map((r) => ({ label: r.system, seconds: r.createdSeconds }));
    writeFileSync(file, podsCreatedChart(`Pods created, ${scenario}`, series));
  }
  return [
    "# Benchmarks",
    "",
    header,
    "",
    "What the results mean, and what was changed because of them: [performance.md](performance.md).",
    "",
    `Command: \`${command}\``,
    "",
    "Each row runs on a fresh local cluster (real kube-apiserver, scheduler and controller-manager; 40 KWOK nodes; the",
    "scheduler without its client-side rate limit, as kwokctl runs it for benchmarks) with a fake Buildkite. Before each",
    `scenario's systems, a **${BARE_PODS}** row POSTs the same number of one-container pods ${String(BARE_CONCURRENCY)} at a time over`,
    "keep-alive connections (a steady scenario's at its rate) on the same nodes with no operator: what this cluster can do",
    "in the same run. Job pods are completed by the fast runner, which makes the agent's API calls (register, acquire,",
    "start, finish) for every system alike. Latencies run from the job's `scheduled_at` in Buildkite (a bare pod's due",
    "time) to the pod being seen created / Running by a watch; CPU per job is the system's own processes' CPU time over",
    "the jobs; API server requests are the API server's own `apiserver_request_total` over the row, net of what the",
    "idle cluster asked for in 5 s before it, divided by the jobs.",
    "",
    ...mainTable(results),
    "",
    "## Targets",
    "",
    ...targets(results),
    "",
    "## Per scenario",
    "",
    `A job's milestones: ${milestoneList}. Listed, reserved and finished are the fake Buildkite's records; the rest are`,
    "first sightings by the benchmark's watches (BuildkiteJob or batch/v1 Job for the record). Each system's stages are",
    "shown in the order it reaches them, each as the time from the milestone before.",
    ...scenarioSections(results, (scenario) => chartPath(out, scenario).link, cpus().length),
    ...memorySection(results),
    ...profileSection(results),
    "",
  ].join("\n");
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const log = (line: string): void => {
    process.stderr.write(`${line}\n`);
  };
  const quoted = process.argv.slice(2).map((a) => (/[\s"]/.test(a) ? JSON.stringify(a) : a));
  const command = `npm run bench -- ${quoted.join(" ")}`.trim();
  if (o.render !== undefined) {
    const saved = JSON.parse(readFileSync(o.render, "utf8")) as { header: string; command: string; results: Result[] };
    await writeFormatted(o.out, render(saved.results, saved.command, saved.header, o.out));
    log(`wrote ${o.out} from ${o.render}`);
    return;
  }
  const systems: SystemUnderTest[] = [OURS];
  if (o.peer) {
    if (peerBinary() === undefined)
      throw new Error(
        "agent-stack-k8s is not built: run `bash hack/build-binaries.sh --with-peers` (see hack/versions.env), or pass --no-peer",
      );
    systems.push(AGENT_STACK_K8S);
  }
  const loadAtStart = loadavg();
  const scenarios: Scenario[] = [];
  if (o.only.has("burst")) scenarios.push({ kind: "burst", jobs: o.jobs });
  if (o.only.has("steady")) scenarios.push({ kind: "steady", rate: o.rate, seconds: o.seconds });
  if (o.only.has("inflight")) scenarios.push({ kind: "inflight", jobs: o.inflight });
  const results: Result[] = [];
  const row = { deadlineMs: 20 * 60_000, cpuProfile: o.cpuProfile, byClient: o.byClient, heapSnapshots: false, log };
  // Written after every row, so a row that fails for good still leaves the rows finished before it on disk.
  const record = async (result: Result): Promise<void> => {
    log(summary(result));
    results.push(result);
    await writeResults(o, command, loadAtStart, results, log);
  };
  for (const scenario of scenarios) {
    await record(await retriedOnce(`${BARE_PODS}, ${describe(scenario)}`, () => runBarePods(scenario, row), log));
    for (const system of scenario.kind === "inflight" ? [OURS] : systems) {
      await record(
        await retriedOnce(
          `${system.name}, ${describe(scenario)}`,
          () => runScenario(system, scenario, { ...row, heapSnapshots: scenario.kind === "inflight" }),
          log,
        ),
      );
    }
  }
}

/** Writes the results file, its charts and the raw results (results.json) for the rows run so far. */
async function writeResults(
  o: Options,
  command: string,
  loadAtStart: number[],
  results: readonly Result[],
  log: (line: string) => void,
): Promise<void> {
  const load = (l: number[]): string => l.map((n) => n.toFixed(2)).join(", ");
  const note = o.note === undefined ? "" : `**${o.note}**\n\n`;
  const header = `${note}Measured ${new Date().toISOString().slice(0, 10)} on ${machine()}, control plane included (everything runs on this machine). Load average (1, 5, 15 min) ${load(loadAtStart)} at the start, ${load(loadavg())} at the end.`;
  mkdirSync(join(dirname(o.out), basename(o.out, ".md")), { recursive: true });
  const saved = join(dirname(o.out), basename(o.out, ".md"), "results.json");
  await writeFormatted(saved, JSON.stringify({ header, command, results }));
  await writeFormatted(o.out, render(results, command, header, o.out));
  log(`wrote ${o.out} and ${saved}`);
}

/**
 * Runs a row, and once more on a fresh cluster if it fails (a control plane that came up slowly on a busy machine
 * can refuse the first requests); the failure is logged, and a second one ends the run.
 */
async function retriedOnce(what: string, row: () => Promise<Result>, log: (line: string) => void): Promise<Result> {
  try {
    return await row();
  } catch (err) {
    log(
      `${what} failed; running it again on a fresh cluster: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
    );
    return row();
  }
}

/** Writes a results file as `npm run format` would leave it (the repository's Prettier settings), so lint passes. */
async function writeFormatted(file: string, text: string): Promise<void> {
  const options = (await prettier.resolveConfig(file)) ?? {};
  writeFileSync(file, await prettier.format(text, { ...options, filepath: file }));
}

/** One line per row for the log while the run goes on. */
function summary(r: Result): string {
  return `${r.system}, ${r.scenario}: ${r.podsPerSecond.toFixed(1)} pods/s, p99 scheduled→created ${(r.createdMs[2] / 1000).toFixed(2)} s, ${r.apiRequestsPerJob.toFixed(1)} API server requests/job, CPU ms/job ${JSON.stringify(Object.fromEntries(Object.entries(r.cpuMsPerJob).map(([k, v]) => [k, Number(v.toFixed(1))])))}, loop delay p99 ${r.loopDelayMs[1].toFixed(0)} ms, ${r.leftovers}`;
}

main().catch((err: unknown) => {
  process.stderr.write(`benchmark: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
