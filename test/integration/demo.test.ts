import { expect } from "chai";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "../support/binaries.js";

const DEMO = join(repoRoot, "dist", "hack", "demo.js");

/** Runs the demo as `npm run demo` does, with BK_DEMO_EXIT=1 and its output not a terminal; returns what it printed. */
async function runDemo(timeoutMs: number): Promise<{ code: number | null; output: string }> {
  // setpriv --pdeathsig: a demo left behind by a killed test run dies with it (it stops its own processes on exit)
  const child = spawn("setpriv", ["--pdeathsig", "SIGKILL", "--", process.execPath, DEMO], {
    env: { ...process.env, BK_DEMO_EXIT: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const chunks: Buffer[] = [];
  child.stdout.on("data", (c: Buffer) => chunks.push(c));
  child.stderr.on("data", (c: Buffer) => chunks.push(c));
  const timer = setTimeout(() => child.kill("SIGINT"), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  clearTimeout(timer);
  return { code, output: Buffer.concat(chunks).toString("utf8") };
}

/**
 * `npm run demo` is what a new user sees first: this runs it whole (its own cluster, fakes and operator) and checks
 * that each story is told, that the operator's log stays out of the view, and that it cleans up after itself.
 */
describe("The demo: each story told, a summary, and nothing left behind", function () {
  this.timeout(240_000);

  it("shows working and broken AWS roles, a step's image and service, a cancel, a deadline, then the summary", async () => {
    const { code, output } = await runDemo(200_000);
    expect(code, output).to.equal(0);
    const expected = [
      /^\* linux-medium-arm: CredentialsReady=True RoleAssumed\. .*role\/ci-deploy/m,
      /^\* release-arm: CredentialsReady=False AccessDenied\. .*"system:serviceaccount:ci:bkq-release-arm"/m,
      /^\* release-arm: an Event, Warning AccessDenied, says so/m,
      /^\* "release \(wrong role\)": in its Buildkite timeline: AWS credentials will not work in this job/m,
      /^\* "tests \+ postgres": pod \S+ runs the step in public\.ecr\.aws\/docker\/library\/node:22-bookworm with the service postgres \(public\.ecr\.aws\/docker\/library\/postgres:16\)/m,
      /^\* "benchmarks \(canceled\)": Pending Unschedulable: .* Canceled in Buildkite now\./m,
      /^\* "benchmarks \(canceled\)": Canceled CanceledInBuildkite: /m,
      /^\* "soak test \(too long\)": TimedOut DeadlineExceeded: .*maxJobDurationSeconds \(10 s\)/m,
      /^\* "soak test \(too long\)": Buildkite shows it stopped by its agent \(.*signal SIGTERM, agent_stop\)/m,
      /^12 jobs: 8 Succeeded, 2 Failed, 1 TimedOut, 1 Canceled\. Scheduled in Buildkite → pod running: median \d+\.\d s/m,
      /^Look further, in another terminal:$/m,
    ];
    for (const line of expected) expect(output).to.match(line);
    // not a terminal: no cursor movement, and each row printed when it changed, not every second
    expect(output).to.not.include("\x1b[");
    const rows = output.split("\n").filter((l) => / build {2,}linux-small /.test(l));
    expect(rows.length, rows.join("\n")).to.be.within(2, 6);
    // the operator logs to its file, not into the view (its JSON lines start with "{")
    expect(output).to.not.match(/^\{/m);
    expect(output).to.include("Operator log: .tmp/demo/operator.log");
    // the demo's cluster is gone with it
    const dir = /kubeconfig (\/\S+)\/kubeconfig/.exec(output)?.[1];
    expect(dir, "the cluster's directory in the output").to.be.a("string");
    expect(existsSync(dir ?? "")).to.equal(false);
  });
});
