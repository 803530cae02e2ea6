import type { BuildkiteJob } from "../operator/src/api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../operator/src/api/generated/buildkite-queue.js";

/** One row of the live view, keyed so that a changed row can be told from an unchanged one. */
export interface Row {
  key: string;
  cells: string[];
}

/** A table of the live view: its column titles and rows. */
export interface Table {
  titles: string[];
  rows: Row[];
}

const ESC = "\x1b[";

/**
 * The demo's output. On a terminal, the live view (the tables) is redrawn in place, and lines that stay (what the
 * demo shows happening: conditions, Events, timeline notes) are printed above it. Elsewhere (a pipe, a file, CI)
 * nothing is redrawn: each changed row is printed once, with the time.
 */
export class Screen {
  private drawn = 0;
  private readonly printed = new Map<string, string>();
  /** Column widths per table (by its first title) in the printed log: they only grow, so columns stay aligned. */
  private readonly widths = new Map<string, number[]>();

  constructor(
    private readonly out: NodeJS.WriteStream,
    readonly live = out.isTTY && process.env.TERM !== "dumb",
  ) {
    if (this.live) {
      out.write(`${ESC}?25l`);
      // put the cursor back however the process ends (Ctrl-C ends it from a signal handler)
      process.on("exit", () => out.write(`${ESC}?25h`));
    }
  }

  /** A line that stays: above the live view on a terminal. */
  say(line: string): void {
    this.clear();
    this.out.write(`${line}\n`);
    this.drawn = 0;
  }

  /** Shows the tables: redrawn in place on a terminal, otherwise only the rows that changed since last time. */
  show(tables: Table[]): void {
    if (this.live) {
      const width = Math.max(20, (this.out.columns || 120) - 1);
      const lines = tables.flatMap((t, i) => [...(i > 0 ? [""] : []), ...render(fitColumns(t, width))]);
      const fit = lines.slice(0, Math.max(1, (this.out.rows || 50) - 2)).map((l) => l.slice(0, width));
      this.clear();
      this.out.write(`${fit.join("\n")}\n`);
      this.drawn = fit.length;
      return;
    }
    const time = new Date().toISOString().slice(11, 19);
    for (const table of tables) {
      const key = table.titles[0] ?? "";
      const first = !this.widths.has(key);
      const widths = columnWidths(table, this.widths.get(key));
      this.widths.set(key, widths);
      const [titles = "", ...lines] = render(table, widths);
      if (first) this.out.write(`         ${titles}\n`);
      table.rows.forEach((row, i) => {
        const cells = row.cells.join("\u0000");
        if (this.printed.get(row.key) === cells) return;
        this.out.write(`${time} ${lines[i] ?? ""}\n`);
        this.printed.set(row.key, cells);
      });
    }
  }

  /** Leaves the last live view on screen and gives the cursor back. */
  end(): void {
    this.drawn = 0;
    if (this.live) this.out.write(`${ESC}?25h`);
  }

  private clear(): void {
    if (this.live && this.drawn > 0) this.out.write(`${ESC}${String(this.drawn)}F${ESC}0J`);
    this.drawn = 0;
  }
}

/** The widest cell of each column, at least `least`. */
function columnWidths(table: Table, least: number[] = []): number[] {
  const rows = [table.titles, ...table.rows.map((r) => r.cells)];
  return table.titles.map((_, i) => Math.max(least[i] ?? 0, ...rows.map((r) => (r[i] ?? "").length)));
}

/** The table's leading columns that fit in `width` (columns go by importance, so a narrow terminal loses the last). */
function fitColumns(table: Table, width: number): Table {
  const widths = columnWidths(table);
  let keep = 1;
  for (let used = widths[0] ?? 0; keep < widths.length; keep++) {
    used += 2 + (widths[keep] ?? 0);
    if (used > width) break;
  }
  return {
    titles: table.titles.slice(0, keep),
    rows: table.rows.map((r) => ({ key: r.key, cells: r.cells.slice(0, keep) })),
  };
}

/** A table as lines of padded columns (the titles first). */
function render(table: Table, widths = columnWidths(table)): string[] {
  return [table.titles, ...table.rows.map((r) => r.cells)].map((r) =>
    r
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd(),
  );
}

const condition = (queue: BuildkiteQueue, type: string): string => {
  const c = queue.status?.conditions?.find((x) => x.type === type);
  return c ? `${c.status} ${c.reason}` : "";
};

/** The queues as `kubectl get bkq` would show them, with their AWS credentials. */
export function queueTable(queues: BuildkiteQueue[]): Table {
  return {
    titles: ["QUEUE", "SHAPE", "SLOTS", "AWS CREDENTIALS", "READY"],
    rows: queues.map((q) => ({
      key: `queue/${q.metadata.name ?? ""}`,
      cells: [
        q.metadata.name ?? "",
        q.spec.instanceShape,
        q.status?.slots ?? "",
        q.spec.aws ? condition(q, "CredentialsReady") || "checking" : "-",
        condition(q, "Ready"),
      ],
    })),
  };
}

/** What the demo knows of one job: its label, and the last BuildkiteJob seen (kept after the TTL deletes it). */
export interface JobView {
  uuid: string;
  label: string;
  queue: string;
  job: BuildkiteJob | undefined;
  buildkiteState: string;
}

/** The jobs: Kubernetes' view (phase, exit code, node, reason) beside Buildkite's (the job's state there). */
export function jobTable(jobs: JobView[]): Table {
  const order = (v: JobView): string => String(v.job?.metadata.creationTimestamp ?? "~");
  return {
    titles: ["JOB", "QUEUE", "PHASE", "EXIT", "BUILDKITE", "NODE", "REASON"],
    rows: [...jobs]
      .sort((a, b) => order(a).localeCompare(order(b)))
      .map((v) => {
        const status = v.job?.status ?? {};
        return {
          key: `job/${v.uuid}`,
          cells: [
            v.label,
            v.queue,
            v.job ? (status.phase ?? "") : "-",
            status.exitCode === undefined ? "" : String(status.exitCode),
            v.buildkiteState,
            status.nodeName ?? "",
            ["Running", "Succeeded"].includes(status.phase ?? "") ? "" : (status.reason ?? ""),
          ],
        };
      }),
  };
}

/** The closing line: jobs by outcome, and how long each waited from Buildkite scheduling it to its pod running. */
export function summary(jobs: JobView[]): string {
  const outcomes = new Map<string, number>();
  for (const v of jobs) {
    const outcome = v.job?.status?.phase ?? `${v.buildkiteState} in Buildkite`;
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
  }
  const waits = jobs
    .map((v) => Date.parse(v.job?.status?.startedAt ?? "") - Date.parse(v.job?.spec.scheduledAt ?? ""))
    .filter((ms) => Number.isFinite(ms))
    .sort((a, b) => a - b);
  const s = (ms: number | undefined): string => `${((ms ?? 0) / 1000).toFixed(1)} s`;
  const byOutcome = [...outcomes].map(([outcome, n]) => `${String(n)} ${outcome}`).join(", ");
  const wait =
    waits.length === 0
      ? "none reached Running"
      : `median ${s(waits[(waits.length - 1) >> 1])}, longest ${s(waits.at(-1))} over ${String(waits.length)} jobs`;
  return `${String(jobs.length)} jobs: ${byOutcome}. Scheduled in Buildkite → pod running: ${wait}.`;
}
