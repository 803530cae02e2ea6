import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { constants } from "node:os";
import type { Launch } from "./container-launch.js";
import { descendants } from "./managed-process.js";

/** unshare's arguments for a PID namespace that dies with the process started in it (its init). */
export const UNSHARE = ["--pid", "--fork", "--kill-child", "--"];
const TAIL_LINES = 40;

/**
 * One container's process, from its start to its exit: what a container runtime does for the kubelet. It runs under
 * `setpriv --pdeathsig SIGKILL` (the kernel ends it if the test runner dies) and, where `unshare` works, in a PID
 * namespace of its own, so every process it starts ends with it.
 */
export class ContainerProcess {
  readonly tail: string[] = [];
  startedAt: Date | undefined;
  finishedAt: Date | undefined;
  exitCode: number | undefined;
  reason: string | undefined;
  /** Resolves once the process has exited and its output is drained, or it could not be started. */
  closed: Promise<void> = Promise.resolve();
  #child: ChildProcess | undefined;
  #killTimer: NodeJS.Timeout | undefined;
  #standIn = false;

  constructor(
    readonly name: string,
    private readonly isolated: boolean,
  ) {}

  get running(): boolean {
    return this.startedAt !== undefined && this.exitCode === undefined;
  }

  /** Starts `launch`; `binary` is where its command was found (undefined: not found, a StartError as runtimes give). */
  start(launch: Launch, binary: string | undefined): void {
    this.startedAt = new Date();
    const log = createWriteStream(launch.logFile, { flags: "a" });
    if (binary === undefined) {
      // What a container runtime reports for a command it cannot start.
      this.#output(`exec: "${launch.binary}": executable file not found on this machine\n`, log);
      this.reason = "StartError";
      this.exited(128, null);
      log.end();
      return;
    }
    // Detached: a process group of its own to signal. In a PID namespace (unshare --kill-child) the kernel ends the
    // container's processes with it.
    const argv = [...(this.isolated ? ["unshare", ...UNSHARE] : []), binary, ...launch.args];
    const child = spawn("setpriv", ["--pdeathsig", "SIGKILL", "--", ...argv], {
      env: launch.env,
      cwd: launch.cwd,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    this.#child = child;
    child.stdout.on("data", (chunk: Buffer) => {
      this.#output(chunk.toString("utf8"), log);
    });
    child.stderr.on("data", (chunk: Buffer) => {
      this.#output(chunk.toString("utf8"), log);
    });
    child.on("exit", (code, signal) => {
      this.exited(code, signal);
    });
    this.closed = new Promise((resolve) => {
      const done = (): void => {
        if (!log.writableEnded) log.end();
        resolve();
      };
      child.on("close", done);
      child.on("error", (err) => {
        this.#output(`spawn failed: ${err.message}\n`, log);
        this.reason = "StartError";
        this.exited(128, null);
        done();
      });
    });
  }

  /** Reports the container as started without running anything: a stand-in for what cannot run here. */
  standIn(): void {
    this.startedAt = new Date();
    this.#standIn = true;
  }

  /** As the kubelet stops a container: SIGTERM, then SIGKILL after `graceMs`. A stand-in stops at once, cleanly. */
  terminate(graceMs: number): void {
    if (this.#standIn) {
      this.exited(0, null);
      return;
    }
    const pid = this.#child?.pid;
    if (!this.running || this.#killTimer || pid === undefined) return;
    // To the process group: the command, and unshare (which passes the exit status on) when it wraps it.
    try {
      process.kill(-pid, "SIGTERM");
    } catch {
      /* exited; its exit event is on its way */
    }
    this.#killTimer = setTimeout(() => {
      this.kill();
    }, graceMs).unref();
  }

  /**
   * SIGKILL to the process and all below it. The agent's bootstrap and the job's commands run in process groups of
   * their own and have no parent-death signal: without a PID namespace to end them, they are found in /proc.
   */
  kill(): void {
    if (this.#standIn) this.exited(0, null);
    const pid = this.#child?.pid;
    if (!this.running || pid === undefined) return;
    const orphans = this.isolated ? [] : descendants(pid);
    for (const target of [-pid, ...orphans]) {
      try {
        process.kill(target, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
  }

  exited(code: number | null, signal: NodeJS.Signals | null): void {
    clearTimeout(this.#killTimer);
    this.finishedAt ??= new Date();
    // A container killed by a signal reports 128 + its number, as container runtimes do.
    this.exitCode ??= code ?? 128 + (signal ? constants.signals[signal] : 0);
    this.reason ??= this.exitCode === 0 ? "Completed" : "Error";
  }

  #output(text: string, log: NodeJS.WritableStream): void {
    log.write(text);
    this.tail.push(...text.split("\n").filter((l) => l.length > 0));
    this.tail.splice(0, Math.max(0, this.tail.length - TAIL_LINES));
  }
}
