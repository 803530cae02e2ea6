import { CoreV1Api, CustomObjectsApi } from "@kubernetes/client-node";
import type { BuildkiteQueue } from "../../operator/src/api/generated/buildkite-queue.js";
import { mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { reuseConnections } from "../../operator/src/wiring.js";
import { LocalCluster } from "../../test/support/cluster.js";
import { installCrds } from "../../test/support/crds.js";
import type { NodePoolSpec } from "../../test/support/nodes.js";
import { actAsBench, auditArgs, perJobByClient, readAudit } from "./audit.js";
import { apiserverRequests, perJob, requestsBetween, total, type RequestCounts } from "./apiserver-metrics.js";
import { percentile, ProcessSampler } from "./measure.js";
import { watchJobs, type JobWatch } from "./trace.js";

/**
 * What every row shares: a fresh cluster with the same nodes and an unthrottled scheduler, the watches that trace
 * each job, and the meters read around the row (CPU of every process, the benchmark's own event loop, the API
 * server's request counts net of what an idle cluster asks of it).
 */

/** 40 nodes (20 per architecture) of 2,048 vCPU, 4 TiB and 600 pods: 10,000 two-vCPU jobs fit on one architecture. */
export const BENCH_NODES: NodePoolSpec[] = [
  { arch: "amd64", count: 20, cpu: "2048", memory: "4Ti", ephemeralStorage: "100T", pods: "600" },
  { arch: "arm64", count: 20, cpu: "2048", memory: "4Ti", ephemeralStorage: "100T", pods: "600" },
];

/**
 * kube-scheduler without its client-side rate limit (default 50 requests/s, a bind each), as kwokctl runs it for
 * benchmarks: the cluster's ceiling is then the API server's, not one client's setting.
 */
export const UNTHROTTLED_SCHEDULER = ["--kube-api-qps=5000", "--kube-api-burst=5000"];

/** The cluster's processes whose CPU each row reports, by the name the cluster starts them under. */
const COMPONENTS = ["kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "kwok"];

export interface RowEnv {
  cluster: LocalCluster;
  kc: ReturnType<LocalCluster["kubeConfig"]>;
  namespace: string;
  watch: JobWatch;
  dir: string;
  byClient: boolean;
  crdsInstalledAt: number;
}

/**
 * kube-controller-manager's garbage collector learns of new kinds by rediscovering every 30 s; until then it checks
 * the owners of each new dependent (a job's pod and token Secret) with a GET each, which a cluster whose CRDs are
 * older never does. A system row starts its jobs only once the collector knows the CRDs.
 */
export async function afterGarbageCollectorSync(env: RowEnv): Promise<void> {
  const wait = env.crdsInstalledAt + 35_000 - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}

/**
 * Runs `fn` on a fresh cluster with the namespace `bench` and its watches; stops everything after. `byClient` turns on
 * the API server's audit log (see audit.ts) and has the benchmark's own requests identify themselves.
 */
export async function withFreshCluster<T>(
  log: (line: string) => void,
  byClient: boolean,
  fn: (env: RowEnv) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "bk-bench-"));
  const cluster = await LocalCluster.start({
    nodePools: BENCH_NODES,
    log,
    schedulerArgs: UNTHROTTLED_SCHEDULER,
    ...(byClient ? { apiServerArgs: auditArgs(dir) } : {}),
  });
  let watch: JobWatch | undefined;
  try {
    const kc = cluster.kubeConfig();
    // client-node opens a TLS connection per request unless told otherwise: the benchmark's own requests (the fast
    // runner's status writes) must not cost the API server a handshake each.
    reuseConnections(kc);
    if (byClient) actAsBench(kc);
    await installCrds(kc);
    const crdsInstalledAt = Date.now();
    const namespace = "bench";
    await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: namespace } } });
    watch = await watchJobs(kc, namespace);
    return await fn({ cluster, kc, namespace, watch, dir, byClient, crdsInstalledAt });
  } finally {
    await watch?.stop().catch(() => undefined);
    await cluster.stop();
    // Logs, profiles and snapshots of the row; BK_KEEP_CLUSTER=1 keeps them with the cluster's.
    if (process.env.BK_KEEP_CLUSTER !== "1") await rm(dir, { recursive: true, force: true });
    else log(`kept the row's files in ${dir}`);
  }
}

/** The meters of one row, read from just before its first job to after its last. */
export interface RowMeasures {
  /** CPU time by process from the first job to the row's end: the cluster's components, the system, this benchmark. */
  cpuSeconds: Record<string, number>;
  /** Max summed RSS of the system's processes (MB). */
  systemRssMb: number;
  /** The benchmark process's event-loop delay (ms): p50, p99, max. A busy loop skews every time it records. */
  loopDelayMs: [number, number, number];
  /** The API server's requests of the row, net of the idle cluster's rate. */
  requests: RequestCounts;
  loadAverage: [number, number];
}

/** How long the idle cluster (and the system, started) is watched for its background request rate. */
const BACKGROUND_MS = 5_000;

export class RowMeter {
  private constructor(
    private readonly env: RowEnv,
    private readonly background: RequestCounts,
    private readonly before: RequestCounts,
    private readonly samplers: Map<string, ProcessSampler>,
    private readonly loop: ReturnType<typeof monitorEventLoopDelay>,
    private readonly startedMs: number,
    private readonly load: number,
    private readonly idleFromMs: number,
  ) {}

  /** Reads the idle rate, then starts every meter; call right before the first job is due. */
  static async start(env: RowEnv, systemPids: readonly number[]): Promise<RowMeter> {
    const idleFromMs = Date.now();
    const idle0 = await apiserverRequests(env.cluster);
    await new Promise((r) => setTimeout(r, BACKGROUND_MS));
    const before = await apiserverRequests(env.cluster);
    const samplers = new Map<string, ProcessSampler>();
    for (const name of COMPONENTS) {
      const pid = env.cluster.processes.get(name)?.pid;
      if (pid !== undefined) samplers.set(name, new ProcessSampler([pid]));
    }
    samplers.set("system", new ProcessSampler(systemPids));
    samplers.set("benchmark", new ProcessSampler([process.pid]));
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    const background = requestsBetween(idle0, before);
    return new RowMeter(env, background, before, samplers, loop, Date.now(), loadavg()[0] ?? 0, idleFromMs);
  }

  /** With the audit log on: requests per job by client, net of each client's idle rate; undefined otherwise. */
  async byClient(jobs: number): Promise<Record<string, Record<string, number>> | undefined> {
    if (!this.env.byClient) return undefined;
    const now = Date.now();
    // The log is written in batches of at most a second.
    await new Promise((r) => setTimeout(r, 2_500));
    const idle = readAudit(this.env.dir, this.idleFromMs, this.startedMs);
    const row = readAudit(this.env.dir, this.startedMs, now);
    return perJobByClient(row, idle, now - this.startedMs, this.startedMs - this.idleFromMs, jobs);
  }

  /** Seconds since the meters started: the row's wall time, read when its last job is done. */
  elapsed(): number {
    return (Date.now() - this.startedMs) / 1000;
  }

  /** CPU-seconds by process and the system's peak memory up to now: call once the row has settled. */
  stopSamplers(): Pick<RowMeasures, "cpuSeconds" | "systemRssMb" | "loopDelayMs"> {
    const cpuSeconds: Record<string, number> = {};
    let systemRssMb = 0;
    for (const [name, s] of this.samplers) {
      const usage = s.stop();
      cpuSeconds[name] = usage.cpuSeconds;
      if (name === "system") systemRssMb = usage.maxRssMb;
    }
    this.loop.disable();
    const ns = (p: number): number => this.loop.percentile(p) / 1e6;
    return { cpuSeconds, systemRssMb, loopDelayMs: [ns(50), ns(99), this.loop.max / 1e6] };
  }

  /** The API server's requests since start, less the idle rate over the same time (call once the row settled). */
  async requests(): Promise<RequestCounts> {
    const after = await apiserverRequests(this.env.cluster);
    const elapsed = (Date.now() - this.startedMs) / BACKGROUND_MS;
    const net: RequestCounts = new Map();
    for (const [k, n] of requestsBetween(this.before, after)) {
      const d = n - (this.background.get(k) ?? 0) * elapsed;
      if (d > 0) net.set(k, d);
    }
    return net;
  }

  loadAverage(): [number, number] {
    return [this.load, loadavg()[0] ?? 0];
  }
}

/** p50, p95 and p99 of `values`. */
export const p50p95p99 = (values: readonly number[]): [number, number, number] => [
  percentile(values, 50),
  percentile(values, 95),
  percentile(values, 99),
];

/** Per-job request counts and their total. */
export function requestsPerJob(counts: RequestCounts, jobs: number): { total: number; byKey: [string, number][] } {
  return { total: total(counts) / Math.max(jobs, 1), byKey: perJob(counts, jobs) };
}

/** What is left once the jobs ended (from the watches: no request of its own): pods, unfinished records, busy slots. */
export async function leftoversAfter(
  env: RowEnv,
  graceMs: number,
  slots: boolean,
): Promise<{ text: string; count: number }> {
  const deadline = Date.now() + graceMs;
  const unfinished = (): number =>
    env.watch.current("records").filter((j) => !["Succeeded", "Failed", "Canceled", "TimedOut"].includes(j.phase ?? ""))
      .length;
  while ((env.watch.current("pods").length > 0 || unfinished() > 0) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 500));
  // Only this operator's rows have queues (agent-stack-k8s's have none to list). A queue's status follows its
  // jobs' a moment later: read again until every slot shows free or the grace is over.
  const listQueues = async (): Promise<BuildkiteQueue[]> =>
    (
      (await env.kc.makeApiClient(CustomObjectsApi).listNamespacedCustomObject({
        group: "buildkite.com",
        version: "v1alpha1",
        plural: "buildkitequeues",
        namespace: env.namespace,
      })) as { items: BuildkiteQueue[] }
    ).items;
  let queues = slots ? await listQueues() : [];
  while (queues.some((q) => (q.status?.active ?? 0) > 0) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 500));
    queues = await listQueues();
  }
  const busy = queues.reduce((n, q) => n + (q.status?.active ?? 0), 0);
  const busySlots = queues.length > 0 ? `, ${String(busy)} slots busy` : "";
  const pods = env.watch.current("pods").length;
  const records = unfinished();
  return {
    text: `${String(pods)} pods, ${String(records)} unfinished BuildkiteJobs${busySlots}`,
    count: pods + records + busy,
  };
}
