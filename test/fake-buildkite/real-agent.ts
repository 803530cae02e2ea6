import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, type WriteStream } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { hackBinary } from "../support/binaries.js";
import { ComponentError, onExit } from "../support/managed-process.js";

/** How a process ended. */
export interface AgentExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** Options for {@link RealAgent.start}. */
export interface RealAgentOptions {
  /** `BUILDKITE_AGENT_ENDPOINT`, e.g. `FakeBuildkite.agentEndpoint`. */
  readonly endpoint: string;
  /** `BUILDKITE_AGENT_TOKEN`: a cluster agent token or a JAT. */
  readonly token: string;
  /** The job to acquire (`--acquire-job`). */
  readonly jobId: string;
  /** The agent's `queue` tag; it must match the job's queue or acquire answers 404. */
  readonly queue: string;
  /**
   * A fresh directory for builds, hooks, plugins, HOME and the log. Keep its path short: the agent puts Unix
   * sockets under HOME, and socket paths are limited to 108 bytes.
   */
  readonly dir: string;
  readonly name?: string;
  /** `--reflect-exit-status`: exit with the job's exit status instead of 0. */
  readonly reflectExitStatus?: boolean;
  /** Extra environment for the agent (and so for the job's bootstrap). */
  readonly env?: Readonly<Record<string, string>>;
}

const TAIL_LINES = 40;

/**
 * The real `buildkite-agent start --acquire-job` pointed at a (fake) Buildkite, as a job pod would run it. Like
 * `ManagedProcess` it runs under `setpriv --pdeathsig` and registers with the runner's exit hooks, so a failed or
 * interrupted test leaves no agent behind; unlike it, it keeps the exit code, which tests assert on (27 = acquire
 * rejected, the job's status with reflect-exit-status).
 */
export class RealAgent {
  readonly #child: ChildProcess;
  readonly #log: WriteStream;
  readonly #tail: string[] = [];
  readonly #exited: Promise<AgentExit>;
  #exit: AgentExit | undefined;

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
    const forget = onExit(() => {
      child.kill("SIGKILL");
    });
    this.#exited = new Promise((resolve) => {
      const ended = (exit: AgentExit): void => {
        forget();
        this.#exit ??= exit;
        resolve(this.#exit);
      };
      child.on("exit", (code, signal) => {
        ended({ code, signal });
      });
      // A spawn failure (no setpriv) emits "error" and never "exit"; keep the reason for the failure message.
      child.on("error", (err) => {
        this.#tail.push(`spawn failed: ${err.message}`);
        ended({ code: null, signal: null });
      });
    });
  }

  /** Starts the agent with a clean environment: nothing from the test runner's own `BUILDKITE_*` leaks in. */
  static async start(options: RealAgentOptions): Promise<RealAgent> {
    const binary = hackBinary("buildkite-agent");
    if (!existsSync(binary))
      throw new ComponentError(`buildkite-agent: binary ${binary} is missing. Run \`bash hack/build-binaries.sh\`.`);
    const dirs = {
      builds: join(options.dir, "builds"),
      hooks: join(options.dir, "hooks"),
      plugins: join(options.dir, "plugins"),
      home: join(options.dir, "home"),
    };
    for (const dir of Object.values(dirs)) await mkdir(dir, { recursive: true });
    // An empty config file keeps a machine-wide /etc/buildkite-agent/buildkite-agent.cfg out of the test.
    const config = join(options.dir, "agent.cfg");
    await writeFile(config, "");
    const name = options.name ?? "test-agent";
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
      HOME: dirs.home,
      BUILDKITE_AGENT_CONFIG: config,
      BUILDKITE_AGENT_TOKEN: options.token,
      BUILDKITE_AGENT_ENDPOINT: options.endpoint,
      BUILDKITE_AGENT_TAGS: `queue=${options.queue}`,
      BUILDKITE_AGENT_NAME: name,
      // No gRPC streaming attempt against a fake that speaks only the polling API (§2.3, §6.7).
      BUILDKITE_AGENT_PING_MODE: "poll-only",
      BUILDKITE_BUILD_PATH: dirs.builds,
      BUILDKITE_HOOKS_PATH: dirs.hooks,
      BUILDKITE_PLUGINS_PATH: dirs.plugins,
      // The seeded job's repository does not exist; the bootstrap's documented switch skips the checkout phase.
      BUILDKITE_SKIP_CHECKOUT: "true",
      BUILDKITE_AGENT_NO_COLOR: "true",
      ...options.env,
    };
    const args = [
      "start",
      "--acquire-job",
      options.jobId,
      ...(options.reflectExitStatus === true ? ["--reflect-exit-status"] : []),
    ];
    const logFile = join(options.dir, "agent.log");
    const log = createWriteStream(logFile, { flags: "a" });
    // setpriv --pdeathsig: the kernel kills the agent if the test runner dies without cleaning up.
    const child = spawn("setpriv", ["--pdeathsig", "SIGKILL", "--", binary, ...args], {
      env,
      cwd: options.dir,
      stdio: ["ignore", "pipe", "pipe"],
    });
    return new RealAgent(`buildkite-agent (${name})`, logFile, child, log);
  }

  /** How the agent ended, or undefined while it runs. */
  get exit(): AgentExit | undefined {
    return this.#exit;
  }

  /** The agent's last log lines. */
  tail(): string {
    return this.#tail.join("\n");
  }

  /** Waits for the agent to exit on its own; after `timeoutMs` kills it and fails with its last log lines. */
  async waitForExit(timeoutMs: number): Promise<AgentExit> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => {
        resolve("timeout");
      }, timeoutMs);
    });
    const result = await Promise.race([this.#exited, timedOut]);
    clearTimeout(timer);
    if (result !== "timeout") return result;
    await this.stop(1_000);
    throw new ComponentError(
      `${this.name} did not exit within ${timeoutMs / 1000} s.\nLast log lines (${this.logFile}):\n${this.tail()}`,
    );
  }

  /** Stops the agent if it still runs (SIGTERM, then SIGKILL after `graceMs`) and closes its log. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.#exit === undefined) {
      this.#child.kill("SIGTERM");
      const timer = setTimeout(() => {
        this.#child.kill("SIGKILL");
      }, graceMs);
      await this.#exited;
      clearTimeout(timer);
    }
    if (!this.#log.writableEnded) await new Promise<void>((resolve) => this.#log.end(resolve));
  }
}
