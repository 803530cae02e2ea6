import { readFileSync } from "node:fs";

/** p-th percentile (0–100) of `values` in ms, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? Number.NaN;
}

/** Least-squares slope of (seconds, backlog) samples: how fast the backlog grew, in jobs per second. */
export function slope(points: readonly [number, number][]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  const sxx = points.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  return sxx === 0 ? 0 : points.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0) / sxx;
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

  /** CPU time used since the sampler started, and that as a share of one core. */
  stop(): { maxRssMb: number; cpuSeconds: number; cpuCores: number } {
    this.sample();
    clearInterval(this.timer);
    this.timer = undefined;
    const wall = (Date.now() - this.startMs) / 1000;
    const used = this.cpuSeconds() - this.startCpu;
    return { maxRssMb: this.maxRssBytes / 1024 / 1024, cpuSeconds: used, cpuCores: wall > 0 ? used / wall : 0 };
  }
}
