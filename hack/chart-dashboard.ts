/**
 * The chart's Grafana dashboard, described as rows of panels and rendered to the JSON Grafana imports
 * (`charts/buildkite-operator/dashboards/buildkite-operator.json`, written and checked by hack/chart.ts).
 *
 * Gauges that only the leader keeps current (slots, credentials) are filtered to the replica reporting
 * `buildkite_operator_leader == 1`, so a standby's stale values never show.
 */

interface Target {
  expr: string;
  legend: string;
}

interface PanelSpec {
  title: string;
  description: string;
  kind: "timeseries" | "stat";
  unit: string;
  targets: Target[];
  /** Grid width out of 24 (default 8). */
  width?: number;
  /** A panel about failures: no data is its healthy state (the dashboard test lets it be empty). */
  errorsOnly?: true;
}

interface RowSpec {
  title: string;
  panels: PanelSpec[];
}

const Q = `queue=~"$queue"`;
const RATE = "$__rate_interval";
const LEADER = "and on (instance) (buildkite_operator_leader == 1)";

const quantiles = (metric: string, selector: string, by = ""): Target[] =>
  [0.5, 0.9, 0.99].map((q) => ({
    expr: `histogram_quantile(${q}, sum by (le${by ? `, ${by}` : ""}) (rate(${metric}_bucket{${selector}}[${RATE}])))`,
    legend: `p${q * 100}${by ? ` {{${by}}}` : ""}`,
  }));

export const ROWS: RowSpec[] = [
  {
    title: "Jobs",
    panels: [
      {
        title: "Jobs dispatched",
        kind: "timeseries",
        unit: "ops",
        description: "Jobs taken from Buildkite and turned into BuildkiteJobs, per second.",
        targets: [
          {
            expr: `sum by (queue) (rate(buildkite_operator_jobs_dispatched_total{${Q}}[${RATE}]))`,
            legend: "{{queue}}",
          },
        ],
      },
      {
        title: "Jobs completed by result",
        kind: "timeseries",
        unit: "ops",
        description: "BuildkiteJobs reaching Succeeded, Failed, Canceled or TimedOut, per second.",
        targets: [
          {
            expr: `sum by (result) (rate(buildkite_operator_jobs_completed_total{${Q}}[${RATE}]))`,
            legend: "{{result}}",
          },
        ],
      },
      {
        title: "Job duration",
        kind: "timeseries",
        unit: "s",
        description: "From a job's pod starting to the job ending.",
        targets: quantiles("buildkite_operator_job_duration_seconds", Q),
      },
      {
        title: "Queue wait",
        kind: "timeseries",
        unit: "s",
        description: "From Buildkite scheduling a job to its pod running: what a person waiting for CI feels.",
        targets: quantiles("buildkite_operator_queue_wait_seconds", Q),
        width: 12,
      },
      {
        title: "Dispatch latency",
        kind: "timeseries",
        unit: "s",
        description: "From a BuildkiteJob's creation to its pod's creation: the operator's own share of the wait.",
        targets: quantiles("buildkite_operator_dispatch_latency_seconds", Q),
        width: 12,
      },
    ],
  },
  {
    title: "Capacity",
    panels: [
      {
        title: "Slots used / capacity",
        kind: "timeseries",
        unit: "short",
        width: 12,
        description:
          "Concurrency slots held by unfinished jobs, against floor(maxVCPU / shape vCPU). Jobs beyond the slots stay scheduled in Buildkite.",
        targets: [
          { expr: `max by (queue) (buildkite_operator_slots_used{${Q}} ${LEADER})`, legend: "used {{queue}}" },
          { expr: `max by (queue) (buildkite_operator_slots_capacity{${Q}} ${LEADER})`, legend: "capacity {{queue}}" },
        ],
      },
      {
        title: "Slot utilisation",
        kind: "stat",
        unit: "percentunit",
        description: "Slots used over slots available, across the selected queues.",
        targets: [
          {
            expr: `sum(buildkite_operator_slots_used{${Q}} ${LEADER}) / sum(buildkite_operator_slots_capacity{${Q}} ${LEADER})`,
            legend: "utilisation",
          },
        ],
        width: 6,
      },
      {
        title: "AWS credentials ready",
        kind: "stat",
        unit: "bool",
        description: "1 when the queue's role was assumed at the last preflight, 0 when it failed.",
        targets: [
          { expr: `min by (queue) (buildkite_operator_credentials_ready{${Q}} ${LEADER})`, legend: "{{queue}}" },
        ],
        width: 6,
      },
    ],
  },
  {
    title: "Buildkite API",
    panels: [
      {
        title: "Requests by endpoint and status",
        kind: "timeseries",
        unit: "reqps",
        description: 'Stacks API requests, each attempt; status "error" when no response came.',
        targets: [
          {
            expr: `sum by (endpoint, status) (rate(buildkite_operator_buildkite_requests_total[${RATE}]))`,
            legend: "{{endpoint}} {{status}}",
          },
        ],
      },
      {
        title: "Failed requests",
        kind: "timeseries",
        errorsOnly: true,
        unit: "reqps",
        description: "Requests answered with 4xx or 5xx (429: rate limited), or with no answer.",
        targets: [
          {
            expr: `sum by (endpoint, status) (rate(buildkite_operator_buildkite_requests_total{status!~"2.."}[${RATE}]))`,
            legend: "{{endpoint}} {{status}}",
          },
        ],
      },
      {
        title: "Request latency (p99)",
        kind: "timeseries",
        unit: "s",
        description: "Stacks API latency by endpoint.",
        targets: [
          {
            expr: `histogram_quantile(0.99, sum by (le, endpoint) (rate(buildkite_operator_buildkite_request_duration_seconds_bucket[${RATE}])))`,
            legend: "{{endpoint}}",
          },
        ],
      },
    ],
  },
  {
    title: "Operator",
    panels: [
      {
        title: "Reconcile errors",
        kind: "timeseries",
        errorsOnly: true,
        unit: "ops",
        description: "Reconciles that failed and were retried with backoff; the operator's log says why.",
        targets: [
          {
            expr: `sum by (controller) (rate(buildkite_operator_reconciles_total{result="error"}[${RATE}]))`,
            legend: "{{controller}}",
          },
        ],
      },
      {
        title: "Work-queue depth",
        kind: "timeseries",
        unit: "short",
        description: "Keys waiting for a worker; a depth that keeps growing means the workers cannot keep up.",
        targets: [{ expr: `max by (controller) (buildkite_operator_workqueue_depth)`, legend: "{{controller}}" }],
      },
      {
        title: "Informer restarts",
        kind: "timeseries",
        errorsOnly: true,
        unit: "short",
        description:
          "Watches replaced after an error or going quiet, per hour. A steady rise points at the API server or the network.",
        targets: [
          {
            expr: `sum by (informer) (increase(buildkite_operator_informer_restarts_total[1h]))`,
            legend: "{{informer}}",
          },
        ],
      },
      {
        title: "Leader",
        kind: "timeseries",
        unit: "bool",
        description:
          "Which replica holds the leader Lease (1). Exactly one should, except for a few seconds during a hand-over.",
        targets: [{ expr: "max by (instance) (buildkite_operator_leader)", legend: "{{instance}}" }],
      },
      {
        title: "Reconcile duration (p99)",
        kind: "timeseries",
        unit: "s",
        description: "Time spent in one reconcile, by controller.",
        targets: [
          {
            expr: `histogram_quantile(0.99, sum by (le, controller) (rate(buildkite_operator_reconcile_duration_seconds_bucket[${RATE}])))`,
            legend: "{{controller}}",
          },
        ],
      },
      {
        title: "Memory (RSS)",
        kind: "timeseries",
        unit: "bytes",
        description: "Resident memory of each replica, against the container's memory limit.",
        targets: [
          { expr: "max by (instance) (buildkite_operator_process_resident_memory_bytes)", legend: "{{instance}}" },
        ],
      },
    ],
  },
];

/** The metric whose `queue` label values fill the dashboard's queue variable. */
export const QUEUE_VARIABLE_METRIC = "buildkite_operator_slots_capacity";

/** Every query of the dashboard's panels, with the panel it belongs to (Grafana's `$variables` left in). */
export function dashboardQueries(): { panel: string; expr: string; errorsOnly: boolean }[] {
  return ROWS.flatMap((row) =>
    row.panels.flatMap((p) =>
      p.targets.map((t) => ({ panel: p.title, expr: t.expr, errorsOnly: p.errorsOnly ?? false })),
    ),
  );
}

/**
 * Every `buildkite_operator_*` metric the dashboard queries, its queue variable's included, as registered
 * (histogram series suffixes removed).
 */
export function dashboardMetrics(): string[] {
  const names = new Set<string>([QUEUE_VARIABLE_METRIC]);
  for (const { expr } of dashboardQueries()) {
    for (const m of expr.matchAll(/buildkite_operator_[a-z_]+/g)) names.add(m[0].replace(/_bucket$/, ""));
  }
  return [...names].sort();
}

const DATASOURCE = { type: "prometheus", uid: "${datasource}" };

function panelJson(p: PanelSpec, id: number, x: number, y: number): Record<string, unknown> {
  return {
    id,
    type: p.kind,
    title: p.title,
    description: p.description,
    datasource: DATASOURCE,
    gridPos: { h: 8, w: p.width ?? 8, x, y },
    fieldConfig: {
      defaults: {
        unit: p.unit,
        ...(p.kind === "timeseries" ? { custom: { fillOpacity: 10, showPoints: "never" } } : {}),
      },
      overrides: [],
    },
    options:
      p.kind === "stat"
        ? {
            reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false },
            colorMode: "value",
            graphMode: "none",
          }
        : {
            legend: { displayMode: "list", placement: "bottom", showLegend: true },
            tooltip: { mode: "multi", sort: "desc" },
          },
    targets: p.targets.map((t, i) => ({
      refId: String.fromCharCode(65 + i),
      datasource: DATASOURCE,
      expr: t.expr,
      legendFormat: t.legend,
    })),
  };
}

/** The dashboard as Grafana's JSON model (stable key order, so the file only changes when the panels do). */
export function renderDashboard(): string {
  const panels: Record<string, unknown>[] = [];
  let id = 1;
  let y = 0;
  for (const row of ROWS) {
    panels.push({
      id: id++,
      type: "row",
      title: row.title,
      collapsed: false,
      gridPos: { h: 1, w: 24, x: 0, y },
      panels: [],
    });
    y += 1;
    let x = 0;
    for (const p of row.panels) {
      const w = p.width ?? 8;
      if (x + w > 24) {
        x = 0;
        y += 8;
      }
      panels.push(panelJson(p, id++, x, y));
      x += w;
    }
    y += 8;
  }
  const dashboard = {
    uid: "buildkite-operator",
    title: "Buildkite operator",
    description:
      "Jobs, capacity, Buildkite API and controller health of the buildkite-operator (metrics buildkite_operator_*).",
    tags: ["buildkite", "ci", "kubernetes"],
    editable: true,
    schemaVersion: 39,
    version: 1,
    time: { from: "now-6h", to: "now" },
    refresh: "30s",
    templating: {
      list: [
        { name: "datasource", label: "Data source", type: "datasource", query: "prometheus", current: {}, hide: 0 },
        {
          name: "queue",
          label: "Queue",
          type: "query",
          datasource: DATASOURCE,
          query: { query: `label_values(${QUEUE_VARIABLE_METRIC}, queue)`, refId: "queue" },
          definition: `label_values(${QUEUE_VARIABLE_METRIC}, queue)`,
          includeAll: true,
          multi: true,
          allValue: ".*",
          current: { text: "All", value: "$__all" },
          refresh: 2,
          sort: 1,
          hide: 0,
        },
      ],
    },
    panels,
  };
  return `${JSON.stringify(dashboard, null, 2)}\n`;
}
