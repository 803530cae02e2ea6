import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, readdirSync, readFileSync, type WriteStream } from "node:fs";

const TAIL_LINES = 25;

/** A component that failed to start or become ready; the message names it and shows its last log lines. */
export class ComponentError extends Error {
  override readonly name = "ComponentError";
}

/** Options for {@link ManagedProcess.start}. */
export interface StartOptions {
  name: string;
  binary: string;
  args: readonly string[];
  logFile: string;
  env?: NodeJS.ProcessEnv;
  /** What to tell the person when the binary is missing. */
  missingHint?: string;
}

const live = new Set<ManagedProcess>();
const cleanups = new Set<() => void>();
let hooksInstalled = false;

/** Registers synchronous clean-up (e.g. removing a cluster's directory) to run if the process exits or is interrupted. */
export function onExit(cleanup: () => void): () => void {
  installExitHooks();
  cleanups.add(cleanup);
  return () => cleanups.delete(cleanup);
}

/**
 * Kills every live component synchronously. Runs on normal exit and on SIGINT/SIGTERM/SIGHUP, so a failed or
 * interrupted test run leaves nothing behind; `setpriv --pdeathsig` covers the case where this process is killed
 * outright (SIGKILL), because the kernel then signals the children itself.
 */
function killAll(): void {
  for (const p of live) p.kill("SIGKILL");
  for (const cleanup of cleanups) cleanup();
  cleanups.clear();
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on("exit", killAll);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(signal, () => {
      killAll();
      process.exit(128 + (signal === "SIGINT" ? 2 : signal === "SIGTERM" ? 15 : 1));
    });
  }
}

/** A local process of the test cluster (etcd, kube-apiserver, …) with its log kept for error messages. */
export class ManagedProcess {
  readonly #child: ChildProcess;
  readonly #log: WriteStream;
  readonly #tail: string[] = [];
  #exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly #exited: Promise<void>;

  private constructor(
    readonly name: string,
    readonly logFile: string,
    child: ChildProcess,
    log: WriteStream,
  ) {
    this.#child = child;
    this.#log = log;
    const keep = (chunk: Buffer): void => {
      log.write(chunk);
      this.#tail.push(
        ...chunk
          .toString("utf8")
          .split("\n")
          .filter((l) => l.length > 0),
      );
      if (this.#tail.length > TAIL_LINES) this.#tail.splice(0, this.#tail.length - TAIL_LINES);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.#exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.#exit = { code, signal };
        live.delete(this);
        resolve();
      });
    });
  }

  /** Starts a component. Fails at once, naming the component, when its binary is missing. */
  static start(options: StartOptions): ManagedProcess {
    if (!existsSync(options.binary)) {
      throw new ComponentError(
        `${options.name}: binary ${options.binary} is missing. ${options.missingHint ?? "Run `bash hack/build-binaries.sh`."}`,
      );
    }
    installExitHooks();
    const log = createWriteStream(options.logFile, { flags: "a" });
    // setpriv --pdeathsig: the kernel kills the component if the test runner dies without cleaning up.
    const child = spawn("setpriv", ["--pdeathsig", "SIGKILL", "--", options.binary, ...options.args], {
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const managed = new ManagedProcess(options.name, options.logFile, child, log);
    live.add(managed);
    return managed;
  }

  /** The process id, for tests that kill a component on purpose. */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  get running(): boolean {
    return this.#exit === undefined;
  }

  /** The last lines the component printed. */
  tail(): string {
    return this.#tail.join("\n");
  }

  /** An error that names this component, says what happened and shows its last log lines. */
  failure(what: string, hint = ""): ComponentError {
    const exit = this.#exit ? ` (it exited with ${this.#exit.signal ?? `code ${String(this.#exit.code)}`})` : "";
    return new ComponentError(
      `${this.name} ${what}${exit}.${hint ? ` ${hint}` : ""}\nLast log lines (${this.logFile}):\n${this.tail()}`,
    );
  }

  /**
   * Polls `probe` until it resolves true; fails with {@link failure} if the process exits or the timeout passes.
   * Every wait has a timeout: a component that never becomes ready ends the run with its logs, never hangs it.
   */
  async waitReady(probe: () => Promise<boolean>, timeoutMs: number, hint = ""): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) throw this.failure("exited before becoming ready", hint);
      if (await probe().catch(() => false)) return;
      if (Date.now() > deadline) throw this.failure(`did not become ready within ${timeoutMs / 1000} s`, hint);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    if (this.running) this.#child.kill(signal);
  }

  /** Stops the component: SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.running) {
      this.#child.kill("SIGTERM");
      const timer = setTimeout(() => {
        this.#child.kill("SIGKILL");
      }, graceMs);
      await this.#exited;
      clearTimeout(timer);
    }
    await new Promise<void>((resolve) => this.#log.end(resolve));
  }
}

/** The components of one cluster, tracked from the moment each starts so a failed start stops them all. */
export class ProcessGroup {
  readonly #byName = new Map<string, ManagedProcess>();

  start(options: StartOptions): ManagedProcess {
    const p = ManagedProcess.start(options);
    this.#byName.set(options.name, p);
    return p;
  }

  get(name: string): ManagedProcess | undefined {
    return this.#byName.get(name);
  }

  /** Stops the components in reverse start order. */
  async stopAll(graceMs?: number): Promise<void> {
    for (const p of [...this.#byName.values()].reverse()) await p.stop(graceMs);
  }
}

/** Every process below `pid`, from /proc: a SIGKILL must reach the job's commands in their own process groups too. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      /* it exited while we looked */
    }
  }
  const found: number[] = [];
  for (let level = [pid]; level.length > 0;) {
    level = level.flatMap((p) => children.get(p) ?? []);
    found.push(...level);
  }
  return found;
}

/** Pids of this machine's processes whose command line is `command` (read from /proc). */
export function processesRunning(command: string): number[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim() === command;
      } catch {
        return false;
      }
    })
    .map(Number);
}
