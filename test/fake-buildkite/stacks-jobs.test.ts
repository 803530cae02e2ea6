import { expect } from "chai";
import { FakeBuildkite } from "./server.js";
import { FakeApiClient } from "./test-client.js";

interface JatBody {
  job_acquisition_tokens: { job_uuid: string; job_acquisition_token: string; expires_at: string }[];
  not_issued: string[];
}

describe("fake Buildkite Stacks API: jobs the stack holds", () => {
  let now: number;
  let fake: FakeBuildkite;
  let api: FakeApiClient;

  beforeEach(async () => {
    now = Date.UTC(2026, 0, 1);
    fake = await FakeBuildkite.start({ clock: () => now });
    api = new FakeApiClient(fake.url, fake.agentToken);
    await api.call("POST", "/v3/stacks/register", {
      json: { key: "op", type: "custom", queue_key: "default-q", metadata: {} },
    });
  });
  afterEach(async () => {
    await fake.stop();
  });

  const reserve = (uuids: string[], seconds = 900): Promise<unknown> =>
    api.call("PUT", "/v3/stacks/op/scheduled-jobs/batch-reserve", {
      json: { job_uuids: uuids, reservation_expiry_seconds: seconds },
    });
  const finish = (uuid: string, json: unknown): Promise<{ status: number; body: Record<string, unknown> }> =>
    api.call("POST", `/v3/stacks/op/jobs/${uuid}/finish`, { json });

  it("shows a reserved job's env and command, and 404 once it is no longer runnable", async () => {
    const job = fake.seedJob({ queue_key: "default-q", command: "make test", env: { EXTRA: "1" } });
    await reserve([job]);
    const res = await api.call<{ id: string; command: string; env: Record<string, string> }>(
      "GET",
      `/v3/stacks/op/jobs/${job}`,
    );
    expect(res.status).to.equal(200);
    expect(res.body.command).to.equal("make test");
    expect(res.body.env).to.include({
      BUILDKITE_JOB_ID: job,
      BUILDKITE_COMMAND: "make test",
      BUILDKITE_COMMIT: "HEAD",
      BUILDKITE_BRANCH: "main",
      BUILDKITE_PIPELINE_PROVIDER: "git",
      BUILDKITE_PLUGINS: "[]",
      BUILDKITE_ORGANIZATION_SLUG: "fake-org",
      EXTRA: "1",
    });
    expect(res.body.env).to.have.keys([
      "CI",
      "BUILDKITE",
      "BUILDKITE_JOB_ID",
      "BUILDKITE_BUILD_ID",
      "BUILDKITE_BUILD_NUMBER",
      "BUILDKITE_BUILD_URL",
      "BUILDKITE_REPO",
      "BUILDKITE_COMMIT",
      "BUILDKITE_BRANCH",
      "BUILDKITE_MESSAGE",
      "BUILDKITE_SOURCE",
      "BUILDKITE_PULL_REQUEST",
      "BUILDKITE_PIPELINE_SLUG",
      "BUILDKITE_PIPELINE_ID",
      "BUILDKITE_PIPELINE_PROVIDER",
      "BUILDKITE_ORGANIZATION_SLUG",
      "BUILDKITE_COMMAND",
      "BUILDKITE_PLUGINS",
      "BUILDKITE_LABEL",
      "BUILDKITE_STEP_KEY",
      "BUILDKITE_RETRY_COUNT",
      "BUILDKITE_COMPUTE_TYPE",
      "BUILDKITE_SKIP_CHECKOUT",
      "EXTRA",
    ]);
    fake.cancel(job);
    expect((await api.call("GET", `/v3/stacks/op/jobs/${job}`)).status).to.equal(404);
  });

  it("reports job states in a batch and leaves unknown uuids out", async () => {
    const a = fake.seedJob({ queue_key: "default-q" });
    const b = fake.seedJob({ queue_key: "default-q" });
    await reserve([a]);
    fake.cancel(b);
    const res = await api.call<{ states: Record<string, string> }>("POST", "/v3/stacks/op/jobs/get-states", {
      json: { job_uuids: [a, b, "unknown"] },
    });
    expect(res.body.states).to.deep.equal({ [a]: "reserved", [b]: "canceled" });
  });

  it("finishes a job the stack cannot run: exit -1 and stack_error; a second finish is 422", async () => {
    const job = fake.seedJob({ queue_key: "default-q" });
    await reserve([job]);
    const first = await finish(job, { detail: "image pull failed" });
    expect(first.status).to.equal(200);
    expect(fake.job(job)).to.include({
      state: "finished",
      exit_status: -1,
      signal_reason: "stack_error",
      finish_detail: "image pull failed",
    });
    const second = await finish(job, { detail: "again" });
    expect(second.status).to.equal(422);
    expect(second.body.message).to.match(/already finished/);
  });

  it("validates finish: detail required and at most 4096 bytes, exit_status kept when given", async () => {
    const job = fake.seedJob({ queue_key: "default-q" });
    expect((await finish(job, {})).status).to.equal(422);
    expect((await finish(job, { detail: "x".repeat(4097) })).status).to.equal(422);
    expect(fake.job(job).state).to.equal("scheduled");
    expect((await finish(job, { detail: "x".repeat(4096), exit_status: 2 })).status).to.equal(200);
    expect(fake.job(job).exit_status).to.equal(2);
    expect((await finish("no-such-job", { detail: "x" })).status).to.equal(404);
  });

  it("posts notifications with per-index errors and keeps the valid ones", async () => {
    const job = fake.seedJob({ queue_key: "default-q" });
    const created = now;
    now += 5000;
    const res = await api.call<{ errors: { error: string; indexes: number[] }[] }>(
      "POST",
      "/v3/stacks/op/notifications",
      {
        json: {
          notifications: [
            { job_uuid: job, detail: "Pod created" },
            { job_uuid: job, detail: "" },
            { job_uuid: "unknown", detail: "x" },
            { job_uuid: job, detail: "Pod running", timestamp: new Date(now - 1000).toISOString() },
            { job_uuid: job, detail: "y".repeat(257) },
            { job_uuid: job, detail: "later", timestamp: new Date(now + 60_000).toISOString() },
            { job_uuid: job, detail: "" },
            { job_uuid: job, detail: "early", timestamp: new Date(created - 1000).toISOString() },
          ],
        },
      },
    );
    expect(res.status).to.equal(200);
    expect(res.body.errors).to.have.deep.members([
      { error: "detail must not be empty", indexes: [1, 6] },
      { error: "job not found", indexes: [2] },
      { error: "detail may be at most 256 characters", indexes: [4] },
      { error: "timestamp must not be in the future", indexes: [5] },
      { error: "timestamp must not be before the job was created", indexes: [7] },
    ]);
    expect(fake.job(job).notifications.map((n) => n.detail)).to.deep.equal(["Pod created", "Pod running"]);
  });

  it("caps notifications at 100 per job and refuses them 300 s after the job finished", async () => {
    const job = fake.seedJob({ queue_key: "default-q" });
    const many = Array.from({ length: 101 }, (_, i) => ({ job_uuid: job, detail: `n${i}` }));
    const capped = await api.call<{ errors: { error: string; indexes: number[] }[] }>(
      "POST",
      "/v3/stacks/op/notifications",
      { json: { notifications: many } },
    );
    expect(capped.body.errors).to.deep.equal([{ error: "job already has 100 notifications", indexes: [100] }]);
    const done = fake.seedJob({ queue_key: "default-q" });
    await finish(done, { detail: "gave up" });
    now += 300_001;
    const late = await api.call<{ errors: { error: string }[] }>("POST", "/v3/stacks/op/notifications", {
      json: { notifications: [{ job_uuid: done, detail: "late" }] },
    });
    expect(late.body.errors[0]?.error).to.equal("job finished more than 300 seconds ago");
  });

  it("issues a single-use job acquisition token for a reserved job, capped at the reservation", async () => {
    const job = fake.seedJob({ queue_key: "default-q" });
    const unreserved = fake.seedJob({ queue_key: "default-q" });
    await reserve([job], 60);
    const res = await api.call<JatBody>("POST", "/v3/stacks/op/job-acquisition-tokens", {
      json: { job_uuids: [job, unreserved] },
    });
    expect(res.status).to.equal(201);
    expect(res.body.not_issued).to.deep.equal([unreserved]);
    const [issued] = res.body.job_acquisition_tokens;
    expect(issued?.job_uuid).to.equal(job);
    expect(issued?.job_acquisition_token).to.match(/^bkjat_/);
    expect(issued?.expires_at).to.equal(new Date(now + 60_000).toISOString());
    const jat = api.withToken(issued?.job_acquisition_token ?? "");
    const registered = await jat.call("POST", "/v3/register", {
      json: { name: "pod-agent", meta_data: ["queue=default-q"] },
    });
    expect(registered.status).to.equal(200);
    const reused = await jat.call("POST", "/v3/register", { json: {} });
    expect(reused.status).to.equal(401);
    expect(reused.body.message).to.equal("job acquisition token already used");
  });

  it("refuses a JAT for another queue's job with 403, and a JAT outlives neither its reservation nor its use", async () => {
    const other = fake.seedJob({ queue_key: "other-q" });
    const res = await api.call("POST", "/v3/stacks/op/job-acquisition-tokens", { json: { job_uuids: [other] } });
    expect(res.status).to.equal(403);
    expect(res.body.message).to.equal("job does not belong to the registered stack queue");
    const job = fake.seedJob({ queue_key: "default-q" });
    await reserve([job], 60);
    const issued = await api.call<JatBody>("POST", "/v3/stacks/op/job-acquisition-tokens", {
      json: { job_uuids: [job], token_lifetime_seconds: 3600 },
    });
    now += 60_000;
    const jat = api.withToken(issued.body.job_acquisition_tokens[0]?.job_acquisition_token ?? "");
    const expired = await jat.call("POST", "/v3/register", { json: {} });
    expect(expired.status).to.equal(401);
    expect(fake.job(job).state).to.equal("scheduled");
  });
});
