import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { testCluster } from "./global-cluster.js";

const MAIN = resolve(fileURLToPath(import.meta.url), "../../../operator/src/main.js");

/**
 * The operator as its own process (`dist/operator/src/main.js`), as a Deployment would run it, so a test can kill
 * it with SIGKILL mid-run. Its JSON log goes to `operator-<name>.log` in the cluster's directory. `setpriv
 * --pdeathsig` makes sure it never outlives the test runner.
 */
export class OperatorProcess {
  private constructor(
    private readonly child: ChildProcess,
    private readonly exited: Promise<void>,
  ) {}

  static start(name: string, flags: readonly string[], env: Record<string, string> = {}): OperatorProcess {
    const log = createWriteStream(join(testCluster().dir, `operator-${name}.log`), { flags: "a" });
    const child = spawn(
      "setpriv",
      ["--pdeathsig", "SIGKILL", "--", process.execPath, MAIN, "--log-level=debug", ...flags],
      {
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", KUBECONFIG: testCluster().kubeconfigPath, ...env },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    child.stdout.pipe(log, { end: false });
    child.stderr.pipe(log, { end: false });
    const exited = new Promise<void>((done) => {
      child.once("exit", () => {
        done();
      });
    });
    return new OperatorProcess(child, exited);
  }

  /** Resolves when the process has exited, for whatever reason (a fault point fired, a kill, a crash). */
  get exit(): Promise<void> {
    return this.exited;
  }

  /** Whether the process has exited. */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The process id, to pause (SIGSTOP) and resume (SIGCONT) it. */
  get pid(): number {
    return this.child.pid ?? 0;
  }

  /** Kills the operator without warning (no graceful stop) and waits for it to be gone. */
  async kill(): Promise<void> {
    this.child.kill("SIGKILL");
    await this.exited;
  }

  /** Stops the operator gracefully (SIGTERM), as Kubernetes would. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGTERM");
    await this.exited;
  }
}
