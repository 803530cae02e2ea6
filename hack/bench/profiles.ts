import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/**
 * Summaries of what V8 wrote for a row: a CPU profile (`--cpu-prof`, written as the operator exits) by where the time
 * went, and heap snapshots (`--heapsnapshot-signal`) by what the live heap holds.
 */

/** A part of a whole: CPU time (ms) or heap (bytes). */
export interface Share {
  what: string;
  amount: number;
  /** Of the whole (for CPU: of the busy time, idle left out). */
  share: number;
}

export interface CpuSummary {
  /**
   * Time the profiler found the thread not idle. V8 samples by wall clock, so on a loaded machine this also holds the
   * time the process waited for a CPU: compare shares, not totals, with the CPU time the row measured.
   */
  busyMs: number;
  /** By package, Node.js module or operator folder. */
  byArea: Share[];
  /** The functions with the most self time. */
  top: Share[];
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Where a function lives: an npm package, a Node.js module, a folder of the operator, or V8 itself. */
export function areaOf(url: string, fn: string): string {
  if (url === "") return fn.startsWith("(") ? fn : "(native built-ins)";
  const pkg = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)?.[1];
  if (pkg !== undefined) return pkg;
  if (url.startsWith("node:")) return url.split("/").slice(0, 2).join("/");
  const own = /\/dist\/(operator\/src\/[^/]+)\//.exec(url)?.[1];
  return own ?? url.replace(/^.*\/dist\//, "");
}

/** Self time by area and by function, from the samples and their time deltas. */
export function summarizeCpuProfile(profile: CpuProfile, top = 15): CpuSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  profile.samples.forEach((id, i) => {
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? profile.timeDeltas[i] ?? 0) / 1000);
  });
  const areas = new Map<string, number>();
  const fns = new Map<string, number>();
  let busy = 0;
  for (const [id, ms] of self) {
    const frame = byId.get(id)?.callFrame;
    if (!frame || frame.functionName === "(idle)") continue;
    busy += ms;
    const area = areaOf(frame.url, frame.functionName);
    areas.set(area, (areas.get(area) ?? 0) + ms);
    const file = frame.url.replace(/^.*\/(node_modules|dist)\//, "");
    const fn = `${frame.functionName || "(anonymous)"} ${file}${file ? `:${String(frame.lineNumber + 1)}` : ""}`;
    fns.set(fn, (fns.get(fn) ?? 0) + ms);
  }
  const shares = (m: Map<string, number>, n: number): Share[] =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([what, ms]) => ({ what, amount: ms, share: busy > 0 ? ms / busy : 0 }));
  return { busyMs: busy, byArea: shares(areas, 12), top: shares(fns, top) };
}

/** The CPU profile the process wrote into `dir` (the newest), summarized; undefined when there is none. */
export function cpuProfileIn(dir: string): CpuSummary | undefined {
  const file = readdirSync(dir)
    .filter((f) => f.endsWith(".cpuprofile"))
    .sort()
    .at(-1);
  return file === undefined
    ? undefined
    : summarizeCpuProfile(JSON.parse(readFileSync(join(dir, file), "utf8")) as CpuProfile);
}

export interface HeapSummary {
  /** The live heap the snapshot holds (V8 collects garbage before it writes one). */
  totalBytes: number;
  /** Self size by constructor (objects) or by kind (strings, arrays, code, …). */
  byKind: Map<string, number>;
}

/** What grew between two snapshots, largest first. */
export function heapGrowth(before: HeapSummary, after: HeapSummary, top = 10): Share[] {
  const grown = after.totalBytes - before.totalBytes;
  return [...after.byKind]
    .map(([what, n]): [string, number] => [what, n - (before.byKind.get(what) ?? 0)])
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([what, bytes]) => ({ what, amount: bytes, share: grown > 0 ? bytes / grown : 0 }));
}
