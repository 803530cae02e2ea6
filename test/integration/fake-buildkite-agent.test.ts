import { expect } from "chai";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RealAgent } from "../fake-buildkite/real-agent.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import { eventually } from "../support/eventually.js";

/**
 * The fake Buildkite is only useful if the real agent accepts it. These tests run the pinned `buildkite-agent`
 * binary (hack/bin) in acquire-job mode, as a job pod would, against a fake on localhost. They need no cluster.
 */
describe("the real buildkite-agent against the fake Buildkite", function () {
  this.timeout(60_000);
  const QUEUE = "default-q";
  let root: string;
  let fake: FakeBuildkite;
  let agents: RealAgent[];

  before(async () => {
    // Short: the agent creates Unix sockets under its HOME (≤ 108-byte paths).
    root = await mkdtemp(join(tmpdir(), "bkfa-"));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });
  beforeEach(async () => {
    fake = await FakeBuildkite.start();
    agents = [];
  });
  afterEach(async () => {
    // An agent still running here means the test failed; stop it before the fake goes away.
    for (const agent of agents) await agent.stop(2_000);
    await fake.stop();
  });

  async function startAgent(jobId: string, name: string, reflectExitStatus: boolean): Promise<RealAgent> {
    const agent = await RealAgent.start({
      endpoint: fake.agentEndpoint,
      token: fake.agentToken,
      jobId,
      queue: QUEUE,
      dir: join(root, name),
      name,
      reflectExitStatus,
    });
    agents.push(agent);
    return agent;
  }

  it("runs a job end to end: register, connect, acquire, start, log chunks, finish, exit with the job's status", async () => {
    const jobId = fake.seedJob({ queue_key: QUEUE, command: "echo hello-from-agent && exit 3" });
    const agent = await startAgent(jobId, "happy", true);
    const exit = await agent.waitForExit(45_000);
    // --reflect-exit-status: the agent exits with the job's own status.
    expect(exit, agent.tail()).to.deep.equal({ code: 3, signal: null });

    const job = fake.job(jobId);
    expect(job).to.include({ state: "finished", exit_status: 3 });
    expect(job.log).to.include("hello-from-agent");
    expect(job.history.map((h) => h.to)).to.deep.equal(["scheduled", "accepted", "running", "finished"]);

    const log = fake.requests();
    const routes = log.map((r) => r.route);
    const first = (route: string): number => routes.indexOf(route);
    for (const route of [
      "agent.register",
      "agent.connect",
      "agent.acquire",
      "agent.start",
      "agent.chunks",
      "agent.finish",
    ]) {
      expect(first(route), `${route} in ${routes.join(", ")}`).to.be.at.least(0);
    }
    expect(first("agent.register")).to.be.below(first("agent.connect"));
    expect(first("agent.connect")).to.be.below(first("agent.acquire"));
    expect(first("agent.acquire")).to.be.below(first("agent.start"));
    expect(routes.lastIndexOf("agent.chunks")).to.be.below(first("agent.finish"));
    const acquire = log[first("agent.acquire")];
    expect(acquire?.headers["x-buildkite-lock-acquire-job"]).to.equal("1");
    expect(acquire?.token_class).to.equal("session");
    expect(log[first("agent.register")]?.token_class).to.equal("agent");
    for (const route of ["agent.start", "agent.chunks", "agent.finish"])
      expect(log[first(route)]?.token_class).to.equal("job");
    expect(JSON.stringify(log), "the request log must not hold token values").not.to.include(fake.agentToken);
    // Every call the agent made was one the fake implements and accepted.
    expect(log.filter((r) => r.status >= 400).map((r) => `${r.method} ${r.path} ${r.status}`)).to.deep.equal([]);
  });

  it("exits 0 after a failing job without --reflect-exit-status", async () => {
    const jobId = fake.seedJob({ queue_key: QUEUE, command: "exit 3" });
    const agent = await startAgent(jobId, "noreflect", false);
    expect(await agent.waitForExit(45_000), agent.tail()).to.deep.equal({ code: 0, signal: null });
    expect(fake.job(jobId)).to.include({ state: "finished", exit_status: 3 });
  });

  it("exits 27 when the job was cancelled before the agent started (acquire answers 422)", async () => {
    const jobId = fake.seedJob({ queue_key: QUEUE, command: "echo should-not-run" });
    fake.cancel(jobId);
    const agent = await startAgent(jobId, "canceled", true);
    expect(await agent.waitForExit(45_000), agent.tail()).to.deep.equal({ code: 27, signal: null });
    const acquires = fake.requests().filter((r) => r.route === "agent.acquire");
    expect(acquires.map((r) => r.status)).to.deep.equal([422]);
    expect(fake.requests().some((r) => r.route === "agent.start")).to.equal(false);
    expect(fake.job(jobId).state).to.equal("canceled");
  });

  it("cancels a running job: the agent sees canceling, interrupts the command and finishes with signal_reason cancel", async () => {
    const jobId = fake.seedJob({ queue_key: QUEUE, command: "echo started-sleeping && sleep 30" });
    const agent = await startAgent(jobId, "cancelrun", true);
    // Cancel only once the command is really running: its first output has reached the fake's log.
    await eventually(
      () => {
        if (!agent.exit) {
          const job = fake.job(jobId);
          if (job.state !== "running" || !job.log.includes("started-sleeping")) throw new Error(`job is ${job.state}`);
          return;
        }
        throw new Error(`agent exited early: ${JSON.stringify(agent.exit)}\n${agent.tail()}`);
      },
      { timeoutMs: 30_000, what: "the job's command to start" },
    );
    expect(fake.cancel(jobId).state).to.equal("canceling");
    const exit = await agent.waitForExit(45_000);
    const job = fake.job(jobId);
    expect(job).to.include({ state: "canceled", signal_reason: "cancel" });
    expect(job.history.map((h) => h.to)).to.deep.equal(["scheduled", "accepted", "running", "canceling", "canceled"]);
    expect(fake.requests().some((r) => r.route === "agent.job-state")).to.equal(true);
    // With --reflect-exit-status the agent reflects the interrupted command (v3.138.1: exit -1, SIGTERM → 255).
    expect(exit.code, agent.tail()).to.not.equal(0);
  });
});
