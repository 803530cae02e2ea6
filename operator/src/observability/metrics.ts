import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { BuildkiteJob, BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import type { RequestReport } from "../buildkite/transport.js";
import { isTerminal } from "../job/phase.js";

const PREFIX = "buildkite_operator_";
/** Seconds: from sub-second dispatch to jobs that wait an hour for a slot. */
const LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600];
/** Seconds: job durations from a few seconds to the 8-hour default limit. */
const DURATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800];
const API_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15];
/**
 * prom-client's Node.js gauges that carry a counter's `_total` suffix (`promtool check metrics` rejects them). Their
 * per-type twins (`nodejs_active_handles`, …) stay: `sum()` of those is the same total.
 */
const MISNAMED_DEFAULTS = new Set(
  ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"].map(
    (n) => PREFIX + n,
  ),
);

/** Something whose size is read at scrape time (a work queue, an informer). */
export interface Sampled {
  name: string;
  value(): number;
}

/**
 * The operator's Prometheus metrics on an injected registry. Labels are bounded: queue is a BuildkiteQueue
 * (`namespace/name`), shape and arch come from a fixed enum, endpoint from the Stacks API's fixed set, result from
 * the job phases. Series of a deleted queue are removed with it.
 */
export class Metrics {
  readonly registry: Registry;
  private readonly dispatched: Counter<"queue" | "shape">;
  private readonly completed: Counter<"queue" | "shape" | "result">;
  private readonly queueWait: Histogram<"queue" | "shape">;
  private readonly dispatchLatency: Histogram<"queue">;
  private readonly duration: Histogram<"queue" | "shape" | "result">;
  private readonly slotsUsed: Gauge<"queue">;
  private readonly slotsCapacity: Gauge<"queue">;
  private readonly apiRequests: Counter<"endpoint" | "status">;
  private readonly apiLatency: Histogram<"endpoint">;
  private readonly reconciles: Counter<"controller" | "result">;
  private readonly reconcileDuration: Histogram<"controller">;
  private readonly leader: Gauge;
  private readonly credentialsReady: Gauge<"queue">;
  private readonly kubeRequests: Counter<"method">;

  constructor(
    registry = new Registry(),
    options: { workQueues?: () => Sampled[]; informerRestarts?: () => Sampled[]; processMetrics?: boolean } = {},
  ) {
    this.registry = registry;
    const r = [registry];
    if (options.processMetrics !== false) registerDefaultMetrics(registry);
    this.dispatched = new Counter({
      name: `${PREFIX}jobs_dispatched_total`,
      help: "Jobs taken from Buildkite and turned into BuildkiteJobs.",
      labelNames: ["queue", "shape"],
      registers: r,
    });
    this.completed = new Counter({
      name: `${PREFIX}jobs_completed_total`,
      help: "BuildkiteJobs that reached a terminal phase, by phase.",
      labelNames: ["queue", "shape", "result"],
      registers: r,
    });
    this.queueWait = new Histogram({
      name: `${PREFIX}queue_wait_seconds`,
      help: "From Buildkite scheduling a job to its pod running.",
      labelNames: ["queue", "shape"],
      buckets: LATENCY_BUCKETS,
      registers: r,
    });
    this.dispatchLatency = new Histogram({
      name: `${PREFIX}dispatch_latency_seconds`,
      help: "From a BuildkiteJob's creation to its pod's creation.",
      labelNames: ["queue"],
      buckets: LATENCY_BUCKETS,
      registers: r,
    });
    this.duration = new Histogram({
      name: `${PREFIX}job_duration_seconds`,
      help: "From a job's pod starting to the job ending.",
      labelNames: ["queue", "shape", "result"],
      buckets: DURATION_BUCKETS,
      registers: r,
    });
    this.slotsUsed = new Gauge({
      name: `${PREFIX}slots_used`,
      help: "Concurrency slots of a queue held by unfinished jobs.",
      labelNames: ["queue"],
      registers: r,
    });
    this.slotsCapacity = new Gauge({
      name: `${PREFIX}slots_capacity`,
      help: "Concurrency slots of a queue: floor(maxVCPU / shape vCPU).",
      labelNames: ["queue"],
      registers: r,
    });
    this.apiRequests = new Counter({
      name: `${PREFIX}buildkite_requests_total`,
      help: 'Stacks API requests (each attempt) by endpoint and HTTP status; status "error" when no response came.',
      labelNames: ["endpoint", "status"],
      registers: r,
    });
    this.apiLatency = new Histogram({
      name: `${PREFIX}buildkite_request_duration_seconds`,
      help: "Stacks API request latency by endpoint.",
      labelNames: ["endpoint"],
      buckets: API_BUCKETS,
      registers: r,
    });
    this.reconciles = new Counter({
      name: `${PREFIX}reconciles_total`,
      help: "Reconciles by controller and result (success or error).",
      labelNames: ["controller", "result"],
      registers: r,
    });
    this.reconcileDuration = new Histogram({
      name: `${PREFIX}reconcile_duration_seconds`,
      help: "Reconcile duration by controller.",
      labelNames: ["controller"],
      buckets: API_BUCKETS,
      registers: r,
    });
    this.leader = new Gauge({
      name: `${PREFIX}leader`,
      help: "1 while this replica holds the leader lease (or runs without leader election).",
      registers: r,
    });
    this.credentialsReady = new Gauge({
      name: `${PREFIX}credentials_ready`,
      help: "1 when the queue's AWS role was assumed at the last check, 0 when it failed.",
      labelNames: ["queue"],
      registers: r,
    });
    this.kubeRequests = new Counter({
      name: `${PREFIX}kubernetes_requests_total`,
      help: "Requests to the Kubernetes API (lists, watches and writes) by HTTP method.",
      labelNames: ["method"],
      registers: r,
    });
    const sampled = (name: string, help: string, label: string, source: (() => Sampled[]) | undefined): void => {
      new Gauge({
        name,
        help,
        labelNames: [label],
        registers: r,
        collect() {
          for (const s of source?.() ?? []) this.set({ [label]: s.name }, s.value());
        },
      });
    };
    sampled(`${PREFIX}workqueue_depth`, "Keys waiting in a controller's work queue.", "controller", options.workQueues);
    new Counter({
      name: `${PREFIX}informer_restarts_total`,
      help: "Times an informer was replaced after an error or going stale.",
      labelNames: ["informer"],
      registers: r,
      // Each informer counts its own restarts (a number that only grows while the process lives, as a counter's
      // must); the counter is set to those counts at scrape time rather than kept twice.
      collect() {
        this.reset();
        for (const s of options.informerRestarts?.() ?? []) this.inc({ informer: s.name }, s.value());
      },
    });
  }

  jobDispatched(queue: string, shape: string): void {
    this.dispatched.inc({ queue, shape });
  }

  /** Observes what changed between a job's stored status and the one just written. */
  jobStatusChanged(job: BuildkiteJob, before: BuildkiteJobStatus, after: BuildkiteJobStatus): void {
    const queue = `${job.metadata.namespace ?? ""}/${job.spec.queueRef.name}`;
    const shape = after.shape ?? "unknown";
    if (after.podCreatedAt !== undefined && before.podCreatedAt === undefined && job.metadata.creationTimestamp) {
      this.dispatchLatency.observe({ queue }, seconds(job.metadata.creationTimestamp, after.podCreatedAt));
    }
    // Once the job has run: a short job's start may be written with its end, never as Running.
    const ran = (s: BuildkiteJobStatus): boolean => s.phase === "Running" || (isTerminal(s.phase) && !!s.startedAt);
    if (ran(after) && !ran(before) && job.spec.scheduledAt) {
      this.queueWait.observe({ queue, shape }, seconds(job.spec.scheduledAt, after.startedAt ?? new Date()));
    }
    const terminal = ["Succeeded", "Failed", "Canceled", "TimedOut"];
    if (after.phase !== undefined && terminal.includes(after.phase) && !terminal.includes(before.phase ?? "")) {
      this.completed.inc({ queue, shape, result: after.phase });
      if (after.startedAt && after.finishedAt)
        this.duration.observe({ queue, shape, result: after.phase }, seconds(after.startedAt, after.finishedAt));
    }
  }

  slots(queue: string, used: number, capacity: number): void {
    this.slotsUsed.set({ queue }, used);
    this.slotsCapacity.set({ queue }, capacity);
  }

  credentials(queue: string, ready: boolean | undefined): void {
    if (ready === undefined) this.credentialsReady.remove({ queue });
    else this.credentialsReady.set({ queue }, ready ? 1 : 0);
  }

  /** Drops a deleted queue's series so label sets stay bounded by the queues that exist. */
  queueDeleted(queue: string): void {
    this.slotsUsed.remove({ queue });
    this.slotsCapacity.remove({ queue });
    this.credentialsReady.remove({ queue });
  }

  apiRequest(report: RequestReport): void {
    this.apiRequests.inc({ endpoint: report.endpoint, status: String(report.status) });
    this.apiLatency.observe({ endpoint: report.endpoint }, report.durationMs / 1000);
  }

  reconciled(controller: string, durationMs: number, failed: boolean): void {
    this.reconciles.inc({ controller, result: failed ? "error" : "success" });
    this.reconcileDuration.observe({ controller }, durationMs / 1000);
  }

  kubernetesRequest(method: string): void {
    this.kubeRequests.inc({ method });
  }

  setLeader(leading: boolean): void {
    this.leader.set(leading ? 1 : 0);
  }
}

/** Node.js process metrics (CPU, memory, event loop, GC), less the ones whose names break Prometheus conventions. */
function registerDefaultMetrics(registry: Registry): void {
  const defaults = new Registry();
  collectDefaultMetrics({ register: defaults, prefix: PREFIX });
  for (const { name } of defaults.getMetricsAsArray()) {
    const metric = defaults.getSingleMetric(name);
    if (metric && !MISNAMED_DEFAULTS.has(name)) registry.registerMetric(metric);
  }
}

function seconds(from: string | Date, to: string | Date): number {
  return Math.max(0, (new Date(to).getTime() - new Date(from).getTime()) / 1000);
}
