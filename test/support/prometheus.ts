import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { httpGet } from "./https-probe.js";
import { ManagedProcess } from "./managed-process.js";
import { freePort } from "./ports.js";

const INSTALL_HINT = "Install Debian's prometheus package: `bash hack/ensure-prometheus.sh` (npm test does).";

/** A binary of Debian's prometheus package, found on PATH; throws with the install hint when it is missing. */
export function prometheusBinary(name: "prometheus" | "promtool"): string {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const path = join(dir, name);
    if (dir !== "" && existsSync(path)) return path;
  }
  throw new Error(`${name} is not on PATH. ${INSTALL_HINT}`);
}

/** `promtool check metrics` on a page of the text exposition format: its complaints, one per line ("" when clean). */
export function promtoolCheckMetrics(page: string): { status: number | null; output: string } {
  const run = spawnSync(prometheusBinary("promtool"), ["check", "metrics"], { input: page, encoding: "utf8" });
  if (run.error) throw run.error;
  return { status: run.status, output: `${run.stdout}${run.stderr}`.trim() };
}

/** One answer of Prometheus's HTTP API (`/api/v1/...`). */
export interface ApiAnswer<T> {
  status: "success" | "error";
  data?: T;
  errorType?: string;
  error?: string;
}

/** An instant query's result (the dashboard's queries all answer vectors): one sample per series. */
export interface InstantVector {
  resultType: string;
  result: { metric: Record<string, string>; value: [unixSeconds: number, value: string] }[];
}

/**
 * A real Prometheus (Debian's package) as a child process of the test: listening on loopback only, with a
 * configuration and TSDB in a temp directory of its own, scraping `targets` every `scrapeIntervalSeconds`. Nothing
 * of the package's system service is used. Stop it in `after`; `setpriv --pdeathsig` ends it with the test runner.
 */
export class Prometheus {
  private constructor(
    private readonly process: ManagedProcess,
    private readonly dir: string,
    readonly url: string,
  ) {}

  static async start(options: { targets: string[]; scrapeIntervalSeconds?: number }): Promise<Prometheus> {
    const binary = prometheusBinary("prometheus");
    const dir = await mkdtemp(join(tmpdir(), "bk-prometheus-"));
    const interval = `${String(options.scrapeIntervalSeconds ?? 1)}s`;
    const config = [
      "global:",
      `  scrape_interval: ${interval}`,
      `  evaluation_interval: ${interval}`,
      "scrape_configs:",
      "  - job_name: buildkite-operator",
      "    static_configs:",
      `      - targets: [${options.targets.map((t) => JSON.stringify(t)).join(", ")}]`,
      "",
    ].join("\n");
    await writeFile(join(dir, "prometheus.yml"), config);
    const port = await freePort();
    const url = `http://127.0.0.1:${String(port)}`;
    const child = ManagedProcess.start({
      name: "prometheus",
      binary,
      args: [
        `--config.file=${join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${String(port)}`,
        "--log.level=warn",
      ],
      logFile: join(dir, "prometheus.log"),
      missingHint: INSTALL_HINT,
    });
    const prometheus = new Prometheus(child, dir, url);
    try {
      await child.waitReady(async () => (await httpGet(`${url}/-/ready`)).status === 200, 30_000);
    } catch (err) {
      await prometheus.stop();
      throw err;
    }
    return prometheus;
  }

  /** An instant query at the current time (`/api/v1/query`); a query that does not parse answers status "error". */
  async query(expr: string): Promise<ApiAnswer<InstantVector>> {
    return this.get<InstantVector>(`/api/v1/query?query=${encodeURIComponent(expr)}`);
  }

  /** The values of `label` on series of `metric` (what Grafana's `label_values(metric, label)` lists). */
  async labelValues(label: string, metric: string): Promise<string[]> {
    const answer = await this.get<string[]>(`/api/v1/label/${label}/values?match[]=${encodeURIComponent(metric)}`);
    return answer.data ?? [];
  }

  async stop(): Promise<void> {
    await this.process.stop(5_000);
    await rm(this.dir, { recursive: true, force: true });
  }

  private async get<T>(path: string): Promise<ApiAnswer<T>> {
    const { body } = await httpGet(`${this.url}${path}`, undefined, 10_000);
    return JSON.parse(body) as ApiAnswer<T>;
  }
}
