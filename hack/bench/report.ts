import { BARE_PODS, type Result } from "./run.js";
import { MILESTONES } from "./trace.js";

/**
 * The results file: one table of every row, then per scenario the picture, each system's stages, the API server's
 * requests per job by verb and resource, and where the CPU went; memory and the operator's profile; the targets.
 */

export const OURS_NAME = "buildkite-operator";
export const PEER_NAME = "agent-stack-k8s";

export const ms = (n: number): string =>
  Number.isNaN(n) ? "–" : Math.abs(n) < 1000 ? `${String(Math.round(n))} ms` : `${(n / 1000).toFixed(2)} s`;
const opt = (n: number | undefined, digits: number): string => (n === undefined ? "–" : n.toFixed(digits));
const pct = (n: number): string => `${(n * 100).toFixed(0)}%`;

function table(head: readonly string[], rows: readonly (readonly string[])[]): string[] {
  return [
    `| ${head.join(" | ")} |`,
    `|${head.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
}

const ceilingOf = (results: readonly Result[], r: Result): Result | undefined =>
  results.find((c) => c.system === BARE_PODS && c.scenario === r.scenario);

/** CPU-seconds the system's own processes spent per job. */
export const cpuPerJobMs = (r: Result): number | undefined => r.cpuMsPerJob.system;

export function mainTable(results: readonly Result[]): string[] {
  return table(
    [
      "System",
      "Scenario",
      "Jobs",
      "Wall",
      "Pods/s",
      "Of ceiling",
      "sched→created p50 / p95 / p99",
      "sched→running p50 / p95 / p99",
      "Max RSS (heap used at end)",
      "CPU (per job)",
      "API server requests/job",
      "Buildkite calls/job",
      "Duplicates",
      "Left over",
    ],
    results.map((r) => {
      const ceiling = ceilingOf(results, r);
      const perJob = cpuPerJobMs(r);
      return [
        r.system,
        r.scenario,
        String(r.jobs),
        `${r.seconds.toFixed(1)} s`,
        r.podsPerSecond.toFixed(1),
        ceiling && r !== ceiling ? pct(r.podsPerSecond / ceiling.podsPerSecond) : "–",
        r.createdMs.map(ms).join(" / "),
        r.runningMs.map(ms).join(" / "),
        r.maxRssMb === undefined
          ? "–"
          : `${r.maxRssMb.toFixed(0)} MB${r.heapUsedMb === undefined ? "" : ` (${r.heapUsedMb.toFixed(0)} MB)`}`,
        r.cpuCores === undefined ? "–" : `${r.cpuCores.toFixed(2)} cores (${ms(perJob ?? Number.NaN)})`,
        r.apiRequestsPerJob.toFixed(1),
        opt(r.buildkiteCallsPerJob, 2),
        String(r.duplicates),
        r.leftovers,
      ];
    }),
  );
}

/** Each system's stages in its own order: per job, the time since the milestone before, and since scheduled_at. */
function stageTables(rows: readonly Result[]): string[] {
  const out: string[] = [];
  for (const r of rows) {
    out.push(
      "",
      `${r.system}:`,
      "",
      ...table(
        ["Milestone", "Jobs", "Stage (since)", "Stage p50 / p99", "Since scheduled p50 / p99"],
        r.stages.map((s) => [
          s.milestone,
          String(s.count),
          s.after,
          `${ms(s.stage[0])} / ${ms(s.stage[1])}`,
          `${ms(s.sinceScheduled[0])} / ${ms(s.sinceScheduled[1])}`,
        ]),
      ),
    );
  }
  return out;
}

/** Requests per job by verb and resource, one column per system; the rarest folded into "other". */
function requestTable(rows: readonly Result[], top = 16): string[] {
  const totals = new Map<string, number>();
  for (const r of rows) for (const [k, n] of r.apiRequests) totals.set(k, Math.max(totals.get(k) ?? 0, n));
  const keys = [...totals].sort((a, b) => b[1] - a[1]).map(([k]) => k);
  const shown = keys.slice(0, top);
  const value = (r: Result, k: string): number => r.apiRequests.find(([key]) => key === k)?.[1] ?? 0;
  const lines = shown.map((k) => [`\`${k}\``, ...rows.map((r) => value(r, k).toFixed(2))]);
  if (keys.length > top)
    lines.push([
      "other",
      ...rows.map((r) =>
        keys
          .slice(top)
          .reduce((n, k) => n + value(r, k), 0)
          .toFixed(2),
      ),
    ]);
  lines.push(["**total**", ...rows.map((r) => `**${r.apiRequestsPerJob.toFixed(1)}**`)]);
  return table(["Verb and resource", ...rows.map((r) => r.system)], lines);
}

/** With `--by-client`: requests per job by client, then the system's own requests by verb and resource. */
function clientTables(rows: readonly Result[]): string[] {
  const withClients = rows.filter((r) => r.byClient);
  if (withClients.length === 0) return [];
  const sum = (m: Record<string, number> | undefined): number => Object.values(m ?? {}).reduce((a, b) => a + b, 0);
  const clients = [...new Set(withClients.flatMap((r) => Object.keys(r.byClient ?? {})))].sort(
    (a, b) =>
      Math.max(...withClients.map((r) => sum(r.byClient?.[b]))) -
      Math.max(...withClients.map((r) => sum(r.byClient?.[a]))),
  );
  const own = (r: Result): Record<string, number> => r.byClient?.[r.system] ?? {};
  const keys = [...new Set(withClients.flatMap((r) => Object.keys(own(r))))].sort(
    (a, b) => Math.max(...withClients.map((r) => own(r)[b] ?? 0)) - Math.max(...withClients.map((r) => own(r)[a] ?? 0)),
  );
  return [
    "",
    "**Requests per job by client** (the API server's audit log, net of each client's idle rate):",
    "",
    ...table(
      ["Client", ...withClients.map((r) => r.system)],
      clients.map((c) => [c, ...withClients.map((r) => sum(r.byClient?.[c]).toFixed(2))]),
    ),
    "",
    "**The system's own requests per job:**",
    "",
    ...table(
      ["Verb and resource", ...withClients.filter((r) => r.system !== BARE_PODS).map((r) => r.system)],
      keys.map((k) => [
        `\`${k}\``,
        ...withClients.filter((r) => r.system !== BARE_PODS).map((r) => (own(r)[k] ?? 0).toFixed(2)),
      ]),
    ),
  ];
}

const PROCESSES = [
  "kube-apiserver",
  "etcd",
  "kube-scheduler",
  "kube-controller-manager",
  "kwok",
  "system",
  "benchmark",
];

/** Every measured process's CPU per job, summed: what one job costs this machine. */
export const machineMsPerJob = (r: Result): number => Object.values(r.cpuMsPerJob).reduce((a, b) => a + b, 0);

/**
 * CPU time per job by process, their sum, and the job rate that sum allows on this machine's cores if nothing else
 * ran: the ceiling that per-job cost sets, whoever spends it.
 */
function cpuTable(rows: readonly Result[], cores: number): string[] {
  return table(
    [
      "System",
      ...PROCESSES,
      "all",
      `jobs/s that allows on ${String(cores)} cores`,
      "benchmark event loop delay p50 / p99 / max",
    ],
    rows.map((r) => {
      const all = machineMsPerJob(r);
      return [
        r.system,
        ...PROCESSES.map((n) => (r.cpuMsPerJob[n] === undefined ? "–" : r.cpuMsPerJob[n].toFixed(1))),
        all.toFixed(1),
        ((cores * 1000) / all).toFixed(0),
        r.loopDelayMs.map(ms).join(" / "),
      ];
    }),
  );
}

/** The per-scenario sections; `chart(scenario)` is the image's path relative to the results file. */
export function scenarioSections(
  results: readonly Result[],
  chart: (scenario: string) => string,
  cores: number,
): string[] {
  const out: string[] = [];
  for (const scenario of [...new Set(results.map((r) => r.scenario))]) {
    const rows = results.filter((r) => r.scenario === scenario);
    out.push("", `### ${scenario}`, "", `![Pods created over time, ${scenario}](${chart(scenario)})`);
    const steady = rows.filter((r) => r.backlog);
    if (steady.length > 0)
      out.push(
        "",
        ...steady.map(
          (r) =>
            `- ${r.system}: backlog (jobs seeded without a pod yet) at most ${String(r.backlog?.max ?? 0)}, ${String(r.backlog?.atLastSeed ?? 0)} when the last job was seeded; it grew by ${(r.backlog?.perSecond ?? 0).toFixed(1)} jobs/s while jobs were seeded.`,
        ),
      );
    out.push(
      "",
      "**Stages** (per job; a job's milestones in the order this system reaches them):",
      ...stageTables(rows),
    );
    out.push(
      "",
      "**API server requests per job** (`apiserver_request_total`, net of the idle cluster's rate; every client of the cluster):",
      "",
      ...requestTable(rows),
      ...clientTables(rows),
      "",
      "**CPU per job by process** (ms of CPU time from the first job until the row settled, divided by the jobs; `system` is the system under test, `benchmark` this process: fake Buildkite, fast runner, watches):",
      "",
      ...cpuTable(rows, cores),
    );
  }
  return out;
}

export function memorySection(results: readonly Result[]): string[] {
  const rows = results.filter((r) => r.heap);
  if (rows.length === 0) return [];
  const out = ["", "## Memory in flight", ""];
  for (const r of rows) {
    const h = r.heap;
    if (!h) continue;
    out.push(
      `${r.scenario}: live heap ${h.fullMb.toFixed(1)} MB with every job Running, ${h.emptyMb.toFixed(1)} MB once they were all deleted: **${h.perJobKb.toFixed(1)} KB per job in flight**; max RSS while they ran ${opt(r.maxRssMb, 0)} MB (heap limit as the chart sets it). What a job in flight holds:`,
      "",
      ...table(
        ["Constructor or kind", "Growth", "Share"],
        h.growth.map((g) => [`\`${g.what}\``, `${(g.amount / 2 ** 20).toFixed(1)} MB`, pct(g.share)]),
      ),
      "",
    );
  }
  return out;
}

export function profileSection(results: readonly Result[]): string[] {
  const out: string[] = [];
  for (const r of results) {
    const p = r.cpuProfile;
    if (!p) continue;
    out.push(
      "",
      `## Where the operator's CPU goes (${r.scenario}, \`--cpu-prof\`)`,
      "",
      `Self time by area and by function, as shares of the ${(p.busyMs / 1000).toFixed(1)} s the profiler found the operator not idle (start-up included; V8 samples wall time, so on a busy machine this includes waiting for a CPU: the row measured ${(((r.cpuMsPerJob.system ?? 0) * r.jobs) / 1000).toFixed(1)} CPU-seconds).`,
      "",
      ...table(
        ["Area (self time)", "ms", "Share"],
        p.byArea.map((a) => [a.what, a.amount.toFixed(0), pct(a.share)]),
      ),
      "",
      ...table(
        ["Function (self time)", "ms", "Share"],
        p.top.map((a) => [`\`${a.what}\``, a.amount.toFixed(0), pct(a.share)]),
      ),
    );
  }
  return out;
}

/** Each target with its result in this run and whether it was met; `–` where the run has no such row. */
export function targets(results: readonly Result[]): string[] {
  const find = (system: string, kind: string): Result | undefined =>
    results.find((r) => r.system === system && r.scenario.startsWith(kind));
  const lines: string[][] = [];
  const add = (target: string, result: string, met: boolean | undefined): void => {
    lines.push([target, result, met === undefined ? "–" : met ? "yes" : "no"]);
  };
  const burst = find(OURS_NAME, "burst");
  const ceiling = burst ? ceilingOf(results, burst) : undefined;
  const peer = find(PEER_NAME, "burst");
  if (burst && ceiling)
    add(
      "burst ≥ 50% of the bare-pods ceiling",
      `${burst.podsPerSecond.toFixed(1)} of ${ceiling.podsPerSecond.toFixed(1)} pods/s (${pct(burst.podsPerSecond / ceiling.podsPerSecond)})`,
      burst.podsPerSecond >= 0.5 * ceiling.podsPerSecond,
    );
  if (burst && peer)
    add(
      "burst ≥ 2× agent-stack-k8s",
      `${(burst.podsPerSecond / peer.podsPerSecond).toFixed(2)}×`,
      burst.podsPerSecond >= 2 * peer.podsPerSecond,
    );
  const steady = find(OURS_NAME, "steady");
  if (steady) {
    add("steady p99 scheduled → pod created < 1 s", ms(steady.createdMs[2]), steady.createdMs[2] < 1000);
    const b = steady.backlog;
    const rate = Number(/steady (\d+)\/s/.exec(steady.scenario)?.[1] ?? 0);
    // Growth below 5% of the rate is noise of the sampling; more is a queue the system does not drain.
    if (b)
      add(
        "steady: no backlog growth",
        `grew ${b.perSecond.toFixed(1)} jobs/s; ${String(b.atLastSeed)} waiting at the last seed, at most ${String(b.max)}`,
        b.perSecond <= 0.05 * rate,
      );
  }
  for (const kind of ["burst", "steady"]) {
    const ours = find(OURS_NAME, kind);
    const theirs = find(PEER_NAME, kind);
    if (!ours || !theirs) continue;
    const a = cpuPerJobMs(ours) ?? Number.NaN;
    const b = cpuPerJobMs(theirs) ?? Number.NaN;
    add(`${kind}: operator CPU per job ≤ agent-stack-k8s's`, `${ms(a)} vs ${ms(b)}`, a <= b);
    add(
      `${kind}: API server requests per job ≤ agent-stack-k8s's`,
      `${ours.apiRequestsPerJob.toFixed(1)} vs ${theirs.apiRequestsPerJob.toFixed(1)}`,
      ours.apiRequestsPerJob <= theirs.apiRequestsPerJob,
    );
  }
  const inflight = results.find((r) => r.system === OURS_NAME && r.scenario.endsWith("in flight"));
  if (inflight) {
    add(`${inflight.scenario}: RSS < 250 MB`, `${opt(inflight.maxRssMb, 0)} MB`, (inflight.maxRssMb ?? Infinity) < 250);
    if (inflight.heap)
      add(
        `${inflight.scenario}: heap per job in flight ≤ 15 KB`,
        `${inflight.heap.perJobKb.toFixed(1)} KB`,
        inflight.heap.perJobKb <= 15,
      );
  }
  // agent-stack-k8s leaves its pods to its Jobs' TTL by design: only duplicates count against it.
  const dirty = results.filter(
    (r) => r.duplicates > 0 || (r.system === OURS_NAME && r.leftoverCount !== undefined && r.leftoverCount > 0),
  );
  if (results.some((r) => r.system === OURS_NAME))
    add(
      "zero duplicates; zero leftovers and every slot free (this operator)",
      dirty.length === 0
        ? "every row"
        : dirty.map((r) => `${r.system}, ${r.scenario}: ${String(r.duplicates)} duplicates, ${r.leftovers}`).join("; "),
      dirty.length === 0,
    );
  return table(["Target", "This run", "Met?"], lines);
}

/** Milestones as the stage tables name them, for the text that explains them. */
export const milestoneList = MILESTONES.join(" → ");
