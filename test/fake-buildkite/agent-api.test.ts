import { expect } from "chai";
import { FakeBuildkite } from "./server.js";
import { FakeApiClient } from "./test-client.js";

interface Registered {
  id: string;
  access_token: string;
  ping_interval: number;
  heartbeat_interval: number;
  job_status_interval: number;
  endpoint: string;
}

interface AgentJob {
  id: string;
  state: string;
  token: string;
  env: Record<string, string>;
  chunks_max_size_bytes: number;
}

const LOCK = { "X-Buildkite-Lock-Acquire-Job": "1" };

describe("fake Buildkite agent API", () => {
  let now: number;
  let fake: FakeBuildkite;
  let api: FakeApiClient;

  beforeEach(async () => {
    now = Date.UTC(2026, 0, 1);
    fake = await FakeBuildkite.start({ clock: () => now, agentLostAfterMs: 30_000 });
    api = new FakeApiClient(fake.url, fake.agentToken);
  });
  afterEach(async () => {
    await fake.stop();
  });

  /** Registers and connects an agent as `buildkite-agent start --acquire-job` does; returns its session client. */
  async function agent(
    queue = "default-q",
    ignoreInDispatches = true,
  ): Promise<{ session: FakeApiClient; registered: Registered }> {
    const res = await api.call<Registered>("POST", "/v3/register", {
      json: { name: "agent-1", meta_data: [`queue=${queue}`, "arch=arm64"], ignore_in_dispatches: ignoreInDispatches },
    });
    expect(res.status).to.equal(200);
    const session = api.withToken(res.body.access_token);
    expect((await session.call("POST", "/v3/connect")).status).to.equal(200);
    return { session, registered: res.body };
  }

  async function acquired(command = "true"): Promise<{ session: FakeApiClient; job: AgentJob; jobApi: FakeApiClient }> {
    const uuid = fake.seedJob({ queue_key: "default-q", command });
    const { session } = await agent();
    const res = await session.call<AgentJob>("PUT", `/v3/jobs/${uuid}/acquire`, { headers: LOCK });
    expect(res.status).to.equal(200);
    return { session, job: res.body, jobApi: api.withToken(res.body.token) };
  }

  it("registers with intervals ≥ 1, an empty endpoint and a session token; heartbeats echo sent_at", async () => {
    const { session, registered } = await agent();
    expect(registered).to.include({ ping_interval: 1, heartbeat_interval: 5, job_status_interval: 1, endpoint: "" });
    expect(registered.access_token).to.match(/^bkaa_/);
    const beat = await session.call("POST", "/v3/heartbeat", { json: { sent_at: "2026-01-01T00:00:00.5Z" } });
    expect(beat.body).to.deep.equal({ sent_at: "2026-01-01T00:00:00.5Z", received_at: new Date(now).toISOString() });
  });

  it("acquires only with the lock header, returning the Job with a job token and the agent's env", async () => {
    const uuid = fake.seedJob({ queue_key: "default-q" });
    const { session, registered } = await agent();
    const unlocked = await session.call("PUT", `/v3/jobs/${uuid}/acquire`);
    expect(unlocked.status).to.equal(422);
    const res = await session.call<AgentJob>("PUT", `/v3/jobs/${uuid}/acquire`, { headers: LOCK });
    expect(res.status).to.equal(200);
    expect(res.body).to.include({ id: uuid, state: "accepted", chunks_max_size_bytes: 102_400 });
    expect(res.body.token).to.match(/^bkaj_/);
    expect(res.body.env).to.include({
      BUILDKITE_AGENT_ID: registered.id,
      BUILDKITE_AGENT_NAME: "agent-1",
      BUILDKITE_AGENT_META_DATA_QUEUE: "default-q",
      BUILDKITE_AGENT_META_DATA_ARCH: "arm64",
    });
    const again = await session.call("PUT", `/v3/jobs/${uuid}/acquire`, { headers: LOCK });
    expect(again.status).to.equal(422);
    expect(again.body.message).to.match(/not in a state that can be acquired/);
  });

  it("hides another queue's job (404) and makes a locked job wait with 423 and Retry-After", async () => {
    const elsewhere = fake.seedJob({ queue_key: "other-q" });
    const locked = fake.seedJob({ queue_key: "default-q", state: "waiting", retry_after_seconds: 2 });
    const { session } = await agent();
    expect((await session.call("PUT", `/v3/jobs/${elsewhere}/acquire`, { headers: LOCK })).status).to.equal(404);
    const wait = await session.call("PUT", `/v3/jobs/${locked}/acquire`, { headers: LOCK });
    expect(wait.status).to.equal(423);
    expect(wait.headers.get("retry-after")).to.equal("2");
    fake.unlock(locked);
    expect((await session.call("PUT", `/v3/jobs/${locked}/acquire`, { headers: LOCK })).status).to.equal(200);
  });

  it("runs a job: start, out-of-order gzip chunks assembled by offset, finish with a string exit status", async () => {
    const { job, jobApi } = await acquired();
    expect(
      (await jobApi.call("PUT", `/v3/jobs/${job.id}/start`, { json: { started_at: "2026-01-01T00:00:00Z" } })).status,
    ).to.equal(200);
    expect(
      (await jobApi.call("POST", `/v3/jobs/${job.id}/chunks?sequence=2&offset=6&size=6`, { gzipText: "world\n" }))
        .status,
    ).to.equal(200);
    expect(
      (await jobApi.call("POST", `/v3/jobs/${job.id}/chunks?sequence=1&offset=0&size=6`, { gzipText: "hello " }))
        .status,
    ).to.equal(200);
    const mismatch = await jobApi.call("POST", `/v3/jobs/${job.id}/chunks?sequence=3&offset=12&size=99`, {
      gzipText: "x",
    });
    expect(mismatch.status).to.equal(422);
    expect((await jobApi.call("GET", `/v3/jobs/${job.id}`)).body).to.deep.equal({ id: job.id, state: "running" });
    const finished = await jobApi.call("PUT", `/v3/jobs/${job.id}/finish`, {
      json: { exit_status: "3", chunks_failed_count: 0 },
    });
    expect(finished.status).to.equal(200);
    const record = fake.job(job.id);
    expect(record).to.include({ state: "finished", exit_status: 3, log: "hello world\n" });
    expect(record.history.map((h) => h.to)).to.deep.equal(["scheduled", "accepted", "running", "finished"]);
    // The job token died with the job, so the agent stops retrying.
    expect((await jobApi.call("PUT", `/v3/jobs/${job.id}/finish`, { json: { exit_status: "3" } })).status).to.equal(
      401,
    );
  });

  it("refuses a job token for another job and log chunks before start", async () => {
    const { job, jobApi } = await acquired();
    const other = fake.seedJob({ queue_key: "default-q" });
    expect((await jobApi.call("GET", `/v3/jobs/${other}`)).status).to.equal(401);
    expect(
      (await jobApi.call("POST", `/v3/jobs/${job.id}/chunks?sequence=1&offset=0&size=1`, { gzipText: "x" })).status,
    ).to.equal(422);
  });

  it("lets a running job be cancelled: the state poll says canceling and finish makes it canceled", async () => {
    const { job, jobApi } = await acquired("sleep 30");
    await jobApi.call("PUT", `/v3/jobs/${job.id}/start`, { json: {} });
    expect(fake.cancel(job.id).state).to.equal("canceling");
    expect((await jobApi.call("GET", `/v3/jobs/${job.id}`)).body).to.include({ state: "canceling" });
    await jobApi.call("PUT", `/v3/jobs/${job.id}/finish`, {
      json: { exit_status: "-1", signal: "SIGTERM", signal_reason: "cancel" },
    });
    expect(fake.job(job.id)).to.include({
      state: "canceled",
      signal: "SIGTERM",
      signal_reason: "cancel",
      exit_status: -1,
    });
  });

  it("times a running job out through timing_out to timed_out", async () => {
    const { job, jobApi } = await acquired();
    await jobApi.call("PUT", `/v3/jobs/${job.id}/start`, { json: {} });
    fake.timeout(job.id);
    expect((await jobApi.call("GET", `/v3/jobs/${job.id}`)).body).to.include({ state: "timing_out" });
    await jobApi.call("PUT", `/v3/jobs/${job.id}/finish`, { json: { exit_status: "1" } });
    expect(fake.job(job.id).state).to.equal("timed_out");
  });

  it("marks a silent agent lost and finishes its job with exit -1", async () => {
    const { session, job, jobApi } = await acquired();
    await jobApi.call("PUT", `/v3/jobs/${job.id}/start`, { json: {} });
    now += 29_999;
    fake.sweep();
    expect(fake.job(job.id).state).to.equal("running");
    now += 1;
    fake.sweep();
    expect(fake.job(job.id)).to.include({ state: "finished", exit_status: -1, finish_detail: "agent lost" });
    expect((await session.call("POST", "/v3/heartbeat", { json: {} })).status).to.equal(401);
    // A late finish from the lost agent is refused as already finished.
    expect((await jobApi.call("PUT", `/v3/jobs/${job.id}/finish`, { json: { exit_status: "0" } })).status).to.equal(
      422,
    );
  });

  it("binds an agent registered with a JAT to its job (403 for any other)", async () => {
    await api.call("POST", "/v3/stacks/register", {
      json: { key: "op", type: "custom", queue_key: "default-q", metadata: {} },
    });
    const mine = fake.seedJob({ queue_key: "default-q" });
    const other = fake.seedJob({ queue_key: "default-q" });
    await api.call("PUT", "/v3/stacks/op/scheduled-jobs/batch-reserve", { json: { job_uuids: [mine] } });
    const issued = await api.call<{ job_acquisition_tokens: { job_acquisition_token: string }[] }>(
      "POST",
      "/v3/stacks/op/job-acquisition-tokens",
      { json: { job_uuids: [mine] } },
    );
    const jat = api.withToken(issued.body.job_acquisition_tokens[0]?.job_acquisition_token ?? "");
    const registered = await jat.call<Registered>("POST", "/v3/register", { json: { meta_data: ["queue=default-q"] } });
    const session = api.withToken(registered.body.access_token);
    expect((await session.call("PUT", `/v3/jobs/${other}/acquire`, { headers: LOCK })).status).to.equal(403);
    expect((await session.call("PUT", `/v3/jobs/${mine}/acquire`, { headers: LOCK })).status).to.equal(200);
  });

  it("pings: dispatches to ordinary agents, pauses and disconnects on request", async () => {
    const uuid = fake.seedJob({ queue_key: "default-q" });
    const { session, registered } = await agent("default-q", false);
    const ping = await session.call<{ job?: { id: string } }>("GET", "/v3/ping");
    expect(ping.body.job?.id).to.equal(uuid);
    expect(fake.job(uuid).state).to.equal("assigned");
    const accepted = await session.call<AgentJob>("PUT", `/v3/jobs/${uuid}/accept`);
    expect(accepted.body).to.include({ state: "accepted" });
    fake.pauseAgent(registered.id);
    expect((await session.call("GET", "/v3/ping")).body).to.deep.equal({ action: "pause" });
    fake.stopAgent(registered.id);
    expect((await session.call("GET", "/v3/ping")).body).to.deep.equal({ action: "disconnect" });
    expect((await session.call("POST", "/v3/disconnect")).body).to.deep.equal({ connection_state: "disconnected" });
    expect((await session.call("GET", "/v3/ping")).status).to.equal(401);
  });
});
