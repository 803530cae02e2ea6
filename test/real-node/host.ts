import { execFile, execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/** A host command that failed; the message names it and carries its stderr. */
export class HostCommandError extends Error {
  override readonly name = "HostCommandError";
}

/** Runs a host command and returns its stdout; fails with the command and its stderr. */
export async function run(command: string, args: readonly string[], input?: string): Promise<string> {
  try {
    if (input === undefined) return (await execFileAsync(command, args, { maxBuffer: 64 << 20 })).stdout;
    return runSync(command, args, input);
  } catch (err) {
    if (err instanceof HostCommandError) throw err;
    const stderr = (err as { stderr?: string }).stderr ?? "";
    throw new HostCommandError(`${command} ${args.join(" ")} failed: ${stderr.trim() || String(err)}`, { cause: err });
  }
}

/** {@link run}, synchronously: for clean-up that must also work inside a process `exit` handler. */
export function runSync(command: string, args: readonly string[], input?: string): string {
  try {
    return execFileSync(command, args, {
      input,
      encoding: "utf8",
      stdio: ["pipe", "pipe", "pipe"],
      maxBuffer: 64 << 20,
    });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? "";
    throw new HostCommandError(`${command} ${args.join(" ")} failed: ${stderr.trim() || String(err)}`, { cause: err });
  }
}

/** Blocks the thread for `ms` (clean-up in an `exit` handler cannot await). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Waits (blocking, at most `ms`) until each process has exited: gone, or a zombie its parent has yet to reap. */
export function waitExitedSync(pids: readonly number[], ms = 3_000): void {
  const exited = (pid: number): boolean => {
    try {
      return readFileSync(`/proc/${pid}/stat`, "utf8")
        .replace(/^.*\) /, "")
        .startsWith("Z");
    } catch {
      return true;
    }
  };
  for (const deadline = Date.now() + ms; Date.now() < deadline && !pids.every(exited);) sleepSync(20);
}

/** The kernel settings kubelet rewrites at start (container_manager_linux.go setupKernelTunables). */
export const KUBELET_SYSCTLS = [
  "vm/overcommit_memory",
  "vm/panic_on_oom",
  "kernel/panic",
  "kernel/panic_on_oops",
  "kernel/keys/root_maxkeys",
  "kernel/keys/root_maxbytes",
] as const;

/** Host paths a node creates when they are missing; whatever of them was missing is removed again. */
const NODE_PATHS = [
  "/var/lib/kubelet",
  "/var/lib/cni",
  "/var/log/containers",
  "/var/log/pods",
  "/run/containerd",
  "/run/containerd/s",
] as const;

/** Every cgroup v1 hierarchy (one directory per mounted controller set), or the unified hierarchy on cgroup v2. */
export function cgroupHierarchies(): string[] {
  const mounts = readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .map((l) => l.split(" "));
  const v1 = mounts.filter((m) => m[2] === "cgroup").map((m) => m[1] ?? "");
  if (v1.length > 0) return v1;
  return mounts
    .filter((m) => m[2] === "cgroup2")
    .map((m) => m[1] ?? "")
    .slice(0, 1);
}

/** What the host looked like before a real node started, so clean-up removes exactly what the node added. */
export interface HostSnapshot {
  /** The test runner that owns the node. */
  readonly pid: number;
  readonly nodeDir: string;
  readonly containerdSocket: string;
  /** The cgroup (in every hierarchy) under which kubelet puts its pods: its `cgroupRoot`. */
  readonly cgroupParent: string;
  readonly bridge: string;
  readonly cniNetwork: string;
  /** `family/table/chain` of every iptables chain there was. */
  readonly chains: readonly string[];
  readonly ipsets: readonly string[];
  readonly sysctls: Readonly<Record<string, string>>;
  /** {@link NODE_PATHS} that did not exist. */
  readonly absentPaths: readonly string[];
}

/** Where the snapshot of the running node is kept, so the next start can clean up after a killed run. */
export const STATE_FILE = "/run/bk-operator-real-node.json";

const FAMILIES = ["iptables", "ip6tables"] as const;

function chainsOf(family: (typeof FAMILIES)[number]): string[] {
  let table = "";
  const chains: string[] = [];
  for (const line of runSync(`${family}-save`, []).split("\n")) {
    if (line.startsWith("*")) table = line.slice(1);
    else if (line.startsWith(":")) chains.push(`${family}/${table}/${line.slice(1).split(" ")[0] ?? ""}`);
  }
  return chains;
}

const ipsets = (): string[] =>
  runSync("ipset", ["list", "-n"])
    .split("\n")
    .filter((s) => s.length > 0);

/** Takes the snapshot a node's clean-up works from. */
export function snapshotHost(
  fields: Pick<HostSnapshot, "nodeDir" | "containerdSocket" | "cgroupParent" | "bridge" | "cniNetwork">,
): HostSnapshot {
  return {
    ...fields,
    pid: process.pid,
    chains: FAMILIES.flatMap(chainsOf),
    ipsets: ipsets(),
    sysctls: Object.fromEntries(KUBELET_SYSCTLS.map((k) => [k, readFileSync(`/proc/sys/${k}`, "utf8").trim()])),
    absentPaths: NODE_PATHS.filter((p) => !existsSync(p)),
  };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Claims the machine for one real node (there is one kubelet, one bridge and one set of iptables chains per host).
 * A snapshot left by a run that was killed before it could clean up is cleaned up first; a live owner is an error.
 */
export function claimHost(fields: Parameters<typeof snapshotHost>[0], log: (line: string) => void): HostSnapshot {
  if (existsSync(STATE_FILE)) {
    const stale = JSON.parse(readFileSync(STATE_FILE, "utf8")) as HostSnapshot;
    if (stale.pid !== process.pid && alive(stale.pid)) {
      throw new Error(
        `another real node is running on this machine (test runner pid ${stale.pid}, ${stale.nodeDir}); stop it first`,
      );
    }
    log(`real node: cleaning up after an earlier run that did not stop (pid ${stale.pid}, ${stale.nodeDir})`);
    for (const problem of cleanupHost(stale)) log(`real node: ${problem}`);
  }
  const snapshot = snapshotHost(fields);
  writeFileSync(STATE_FILE, JSON.stringify(snapshot));
  return snapshot;
}

/** Pids of the shims our containerd started (they outlive it: they are re-parented, not its children). */
function shimPids(containerdSocket: string): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
        // containerd starts the shim by its resolved path (hack/bin's link target, e.g. containerd-shim-runc-v2-v2.3.7)
        return basename(argv[0] ?? "").startsWith("containerd-shim-runc-v2") && argv.includes(containerdSocket);
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

function cgroupDirs(parent: string): string[] {
  const walk = (dir: string): string[] => [
    ...readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .flatMap((e) => walk(join(dir, e.name))),
    dir,
  ];
  return cgroupHierarchies()
    .map((h) => join(h, parent))
    .filter((d) => existsSync(d))
    .flatMap(walk);
}

/** Every process in the node's cgroups: the pods' containers and their pause processes. */
function podPids(parent: string): number[] {
  const pids = cgroupDirs(parent).flatMap((d) => readFileSync(join(d, "cgroup.procs"), "utf8").split("\n"));
  return [...new Set(pids.filter((p) => p.length > 0).map(Number))];
}

function killAll(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** Mount points under `dir` (overlay root filesystems, shm, network namespaces, kubelet's own bind mount). */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string): string =>
    s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => unescape(l.split(" ")[4] ?? ""))
    .filter((m) => m === dir || m.startsWith(`${dir}/`));
}

/** Removes the rules of new `KUBE-*` chains (kubelet's and kube-router's), the rules jumping to them, then the chains. */
function removeNewChains(snapshot: HostSnapshot): void {
  const before = new Set(snapshot.chains);
  for (const family of FAMILIES) {
    const script: string[] = [];
    let table = "";
    let ours = new Set<string>();
    let jumps: string[] = [];
    for (const line of runSync(`${family}-save`, []).split("\n")) {
      if (line.startsWith("*")) {
        table = line.slice(1);
        ours = new Set();
        jumps = [];
      } else if (line.startsWith(":KUBE-")) {
        const chain = line.slice(1).split(" ")[0] ?? "";
        if (!before.has(`${family}/${table}/${chain}`)) ours.add(chain);
      } else if (line.startsWith("-A ")) {
        const words = line.split(" ");
        const target = words[words.findIndex((w) => w === "-j" || w === "-g") + 1] ?? "";
        if (!ours.has(words[1] ?? "") && ours.has(target)) jumps.push(`-D ${line.slice(3)}`);
      } else if (line === "COMMIT" && ours.size > 0) {
        script.push(
          `*${table}`,
          ...jumps,
          ...[...ours].map((c) => `-F ${c}`),
          ...[...ours].map((c) => `-X ${c}`),
          "COMMIT",
        );
      }
    }
    // --noflush: only these changes, applied atomically; rules others (Docker) add meanwhile are left alone
    if (script.length > 0) runSync(`${family}-restore`, ["--noflush"], `${script.join("\n")}\n`);
  }
}

/** What of a node is still on the host, compared with its snapshot (empty after a complete clean-up). */
export function leftovers(snapshot: HostSnapshot): string[] {
  const found: string[] = [];
  const shims = shimPids(snapshot.containerdSocket);
  if (shims.length > 0) found.push(`shim processes ${shims.join(", ")}`);
  const pods = podPids(snapshot.cgroupParent);
  if (pods.length > 0) found.push(`pod processes ${pods.join(", ")}`);
  const cgroups = cgroupDirs(snapshot.cgroupParent);
  if (cgroups.length > 0) found.push(`cgroups ${cgroups.join(", ")}`);
  const mounts = mountsUnder(snapshot.nodeDir);
  if (mounts.length > 0) found.push(`mounts ${mounts.join(", ")}`);
  if (existsSync(`/sys/class/net/${snapshot.bridge}`)) found.push(`network interface ${snapshot.bridge}`);
  const chains = FAMILIES.flatMap(chainsOf).filter((c) => !snapshot.chains.includes(c));
  if (chains.length > 0) found.push(`iptables chains ${chains.join(", ")}`);
  const sets = ipsets().filter((s) => !snapshot.ipsets.includes(s));
  if (sets.length > 0) found.push(`ipsets ${sets.join(", ")}`);
  for (const [key, value] of Object.entries(snapshot.sysctls)) {
    const now = readFileSync(`/proc/sys/${key}`, "utf8").trim();
    if (now !== value) found.push(`${key} = ${now} (was ${value})`);
  }
  const paths = snapshot.absentPaths.filter((p) => existsSync(p));
  if (paths.length > 0) found.push(`paths ${paths.join(", ")}`);
  if (existsSync(STATE_FILE)) found.push(STATE_FILE);
  return found;
}

/**
 * Removes what a real node added to the host, from its snapshot: the pods' processes and the shims, mounts under the
 * node's directory, the CNI bridge, new `KUBE-*` iptables chains and ipsets, kubelet's kernel settings, the node's
 * cgroups, CNI state and log links, and the host paths that did not exist. Synchronous and best-effort: it runs in
 * `stop()` and in a process `exit` handler alike. Returns what it could not undo.
 */
export function cleanupHost(snapshot: HostSnapshot): string[] {
  const problems: string[] = [];
  const step = (what: string, action: () => void): void => {
    try {
      action();
    } catch (err) {
      problems.push(`clean-up could not ${what}: ${err instanceof Error ? err.message : String(err)}`);
    }
  };
  step("stop the shims", () => {
    killAll(shimPids(snapshot.containerdSocket));
  });
  step("stop the pods' processes", () => {
    for (let i = 0; i < 50 && podPids(snapshot.cgroupParent).length > 0; i++) {
      killAll(podPids(snapshot.cgroupParent));
      sleepSync(100);
    }
  });
  step("unmount", () => {
    for (const mount of mountsUnder(snapshot.nodeDir).sort((a, b) => b.length - a.length)) {
      try {
        runSync("umount", [mount]);
      } catch {
        runSync("umount", ["-l", mount]);
      }
    }
  });
  step(`delete the bridge ${snapshot.bridge}`, () => {
    const ports = runSync("ip", ["-o", "link", "show", "master", snapshot.bridge]).split("\n");
    for (const port of ports.map((l) => /^\d+: ([^@:]+)/.exec(l)?.[1]).filter((p) => p !== undefined))
      runSync("ip", ["link", "del", port]);
    if (existsSync(`/sys/class/net/${snapshot.bridge}`)) runSync("ip", ["link", "del", snapshot.bridge]);
  });
  step("remove iptables chains", () => {
    removeNewChains(snapshot);
  });
  step("remove ipsets", () => {
    const before = new Set(snapshot.ipsets);
    for (const set of ipsets().filter((s) => s.startsWith("KUBE-") && !before.has(s)))
      runSync("ipset", ["destroy", set]);
  });
  step("restore kernel settings", () => {
    for (const [key, value] of Object.entries(snapshot.sysctls)) {
      if (readFileSync(`/proc/sys/${key}`, "utf8").trim() !== value) writeFileSync(`/proc/sys/${key}`, value);
    }
  });
  step("remove cgroups", () => {
    for (const dir of cgroupDirs(snapshot.cgroupParent)) rmdirSync(dir);
  });
  step("remove CNI state and log links", () => {
    const results = "/var/lib/cni/results";
    if (existsSync(results)) {
      for (const f of readdirSync(results).filter((n) => n.startsWith(`${snapshot.cniNetwork}-`)))
        rmSync(join(results, f));
    }
    const links = "/var/log/containers";
    if (existsSync(links)) {
      for (const f of readdirSync(links).filter((n) => readlinkSync(join(links, n)).startsWith(snapshot.nodeDir)))
        rmSync(join(links, f));
    }
  });
  step("remove host paths", () => {
    for (const path of [...snapshot.absentPaths].sort((a, b) => b.length - a.length).filter((p) => existsSync(p))) {
      // Another containerd (Docker's) may put its shims' sockets in /run/containerd/s: remove those only when empty.
      if (path.startsWith("/run/containerd")) {
        if (readdirSync(path).length === 0) rmdirSync(path);
      } else {
        rmSync(path, { recursive: true, force: true });
      }
    }
  });
  step("remove the state file", () => {
    rmSync(STATE_FILE, { force: true });
  });
  return problems;
}
