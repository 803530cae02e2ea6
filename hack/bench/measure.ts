import { makeInformer, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { readFileSync } from "node:fs";

/** When the benchmark first saw each job's pod, and when it first saw it Running (local clock, ms). */
export interface PodTimes {
  created: Map<string, number>;
  running: Map<string, number>;
  /** Pods seen per job uuid: more than one is a duplicate run. */
  podsPerJob: Map<string, Set<string>>;
}

/** The job uuid a pod runs: our label, or agent-stack-k8s's env on any container. */
export function jobUuidOf(pod: V1Pod): string | undefined {
  const label = pod.metadata?.labels?.["buildkite.com/job-uuid"];
  if (label) return label;
  for (const c of [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])]) {
    const env = c.env?.find((e) => e.name === "BUILDKITE_AGENT_ACQUIRE_JOB")?.value;
    if (env) return env.toLowerCase();
    const i = c.args?.indexOf("--acquire-job") ?? -1;
    if (i >= 0 && c.args?.[i + 1]) return c.args[i + 1]?.toLowerCase();
  }
  return undefined;
}

/** Watches the pods of one namespace and timestamps each job's pod as it is created and as it starts running. */
export async function watchPods(
  kc: KubeConfig,
  namespace: string,
  list: () => Promise<{ items: V1Pod[] }>,
): Promise<{ times: PodTimes; stop(): Promise<void> }> {
  const times: PodTimes = { created: new Map(), running: new Map(), podsPerJob: new Map() };
  const informer = makeInformer<V1Pod>(kc, `/api/v1/namespaces/${namespace}/pods`, list);
  const seen = (pod: V1Pod): void => {
    const uuid = jobUuidOf(pod);
    if (!uuid) return;
    const now = Date.now();
    if (!times.created.has(uuid)) times.created.set(uuid, now);
    const pods = times.podsPerJob.get(uuid) ?? new Set<string>();
    pods.add(pod.metadata?.uid ?? "");
    times.podsPerJob.set(uuid, pods);
    if (pod.status?.phase === "Running" && !times.running.has(uuid)) times.running.set(uuid, now);
  };
  informer.on("add", seen);
  informer.on("update", seen);
  const state = { stopped: false };
  informer.on("error", () => {
    setTimeout(() => {
      if (!state.stopped) void informer.start();
    }, 500);
  });
  await informer.start();
  return {
    times,
    stop: async () => {
      state.stopped = true;
      await informer.stop();
    },
  };
}

/** p-th percentile (0–100) of `values` in ms, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? Number.NaN;
}

/** Samples the summed resident memory and CPU time of some processes from /proc. */
export class ProcessSampler {
  private timer: NodeJS.Timeout | undefined;
  maxRssBytes = 0;
  private readonly startCpu: number;
  private readonly startMs = Date.now();

  constructor(private readonly pids: readonly number[]) {
    this.startCpu = this.cpuSeconds();
    this.timer = setInterval(() => {
      this.sample();
    }, 250);
  }

  sample(): void {
    let total = 0;
    for (const pid of this.pids) {
      try {
        const status = readFileSync(`/proc/${pid}/status`, "utf8");
        total += Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
      } catch {
        // The process is gone; it holds no memory.
      }
    }
    this.maxRssBytes = Math.max(this.maxRssBytes, total);
  }

  cpuSeconds(): number {
    let total = 0;
    for (const pid of this.pids) {
      try {
        const fields = readFileSync(`/proc/${pid}/stat`, "utf8")
          .replace(/^.*\) /, "")
          .split(" ");
        total += (Number(fields[11]) + Number(fields[12])) / 100;
      } catch {
        // Gone.
      }
    }
    return total;
  }

  /** CPU used as a share of one core since the sampler started. */
  stop(): { maxRssMb: number; cpuCores: number } {
    this.sample();
    clearInterval(this.timer);
    this.timer = undefined;
    const wall = (Date.now() - this.startMs) / 1000;
    return {
      maxRssMb: this.maxRssBytes / 1024 / 1024,
      cpuCores: wall > 0 ? (this.cpuSeconds() - this.startCpu) / wall : 0,
    };
  }
}
