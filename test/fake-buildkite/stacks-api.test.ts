import { expect } from "chai";
import { FakeBuildkite } from "./server.js";
import { FakeApiClient, type ApiResponse } from "./test-client.js";

interface ListBody {
  jobs: {
    id: string;
    scheduled_at: string;
    pipeline: { slug: string };
    build: { number: number };
    step: { key: string | null };
  }[];
  page_info: { has_next_page: boolean; end_cursor: string | null };
  cluster_queue: { id: string; paused: boolean; dispatch_paused: boolean };
}

interface ReserveBody {
  reserved: string[];
  not_reserved: string[];
}

describe("fake Buildkite Stacks API: register, list, reserve", () => {
  let now: number;
  let fake: FakeBuildkite;
  let api: FakeApiClient;

  beforeEach(async () => {
    now = Date.UTC(2026, 0, 1);
    fake = await FakeBuildkite.start({ clock: () => now });
    api = new FakeApiClient(fake.url, fake.agentToken);
  });
  afterEach(async () => {
    await fake.stop();
  });

  const register = (key: string, queueKey = "default-q"): Promise<unknown> =>
    api.call("POST", "/v3/stacks/register", { json: { key, type: "custom", queue_key: queueKey, metadata: {} } });
  const list = (key: string, query = "queue_key=default-q"): Promise<ApiResponse<ListBody>> =>
    api.call<ListBody>("GET", `/v3/stacks/${key}/scheduled-jobs?${query}`);
  const reserve = (key: string, uuids: string[], expiry?: number): Promise<ApiResponse<ReserveBody>> =>
    api.call<ReserveBody>("PUT", `/v3/stacks/${key}/scheduled-jobs/batch-reserve`, {
      json: { job_uuids: uuids, ...(expiry === undefined ? {} : { reservation_expiry_seconds: expiry }) },
    });

  it("registers a stack with 201, then updates it with 200, echoing cluster_queue_key", async () => {
    const body = { key: "op-1", type: "custom", queue_key: "__default__", metadata: { version: "1" } };
    const first = await api.call("POST", "/v3/stacks/register", { json: body });
    expect(first.status).to.equal(201);
    expect(first.body).to.include({
      key: "op-1",
      type: "custom",
      cluster_queue_key: "__default__",
      state: "connected",
    });
    expect(first.body.metadata).to.deep.equal({ version: "1" });
    const again = await api.call("POST", "/v3/stacks/register", { json: { ...body, queue_key: "default-q" } });
    expect(again.status).to.equal(200);
    expect(again.body).to.include({ id: first.body.id, cluster_queue_key: "default-q" });
  });

  it("rejects an invalid stack key, type or metadata with 422 and a message", async () => {
    for (const json of [
      { key: "has space", type: "custom", queue_key: "q", metadata: {} },
      { key: "k".repeat(81), type: "custom", queue_key: "q", metadata: {} },
      { key: "ok", type: "bespoke", queue_key: "q", metadata: {} },
      { key: "ok", type: "custom", queue_key: "", metadata: {} },
      { key: "ok", type: "custom", queue_key: "q" },
    ]) {
      const res = await api.call("POST", "/v3/stacks/register", { json });
      expect(res.status, JSON.stringify(json)).to.equal(422);
      expect(res.body.message).to.be.a("string").and.not.equal("");
    }
  });

  it("answers 401 without a token and 404 for a stack that never registered", async () => {
    const anonymous = await api.call("GET", "/v3/stacks/op/scheduled-jobs?queue_key=default-q", { token: null });
    expect(anonymous.status).to.equal(401);
    expect(anonymous.body.message).to.match(/Authorization/);
    expect(
      (await api.call("GET", "/v3/stacks/op/scheduled-jobs?queue_key=default-q", { token: "bkct_wrong" })).status,
    ).to.equal(401);
    expect((await list("op")).status).to.equal(404);
  });

  it("lists scheduled jobs of the queue oldest first, with every nested object present", async () => {
    await register("op");
    const newer = fake.seedJob({ queue_key: "default-q", scheduled_at: "2025-12-31T12:00:00Z", step_key: "build" });
    const older = fake.seedJob({ queue_key: "default-q", scheduled_at: "2025-12-31T10:00:00Z" });
    fake.seedJob({ queue_key: "other-q" });
    const res = await list("op");
    expect(res.status).to.equal(200);
    expect(res.body.jobs.map((j) => j.id)).to.deep.equal([older, newer]);
    expect(res.body.jobs[1]).to.deep.include({ scheduled_at: "2025-12-31T12:00:00.000Z", step: { key: "build" } });
    expect(res.body.jobs[0]?.pipeline.slug).to.equal("fake-pipeline");
    expect(res.body.cluster_queue).to.include({ paused: false, dispatch_paused: false });
  });

  it("pages with limit and the after cursor, and sends a null end_cursor for an empty page", async () => {
    await register("op");
    const ids = [1, 2, 3].map((n) => fake.seedJob({ queue_key: "default-q", scheduled_at: `2025-12-31T0${n}:00:00Z` }));
    const first = await list("op", "queue_key=default-q&limit=2");
    expect(first.body.jobs.map((j) => j.id)).to.deep.equal(ids.slice(0, 2));
    expect(first.body.page_info.has_next_page).to.equal(true);
    const cursor = first.body.page_info.end_cursor ?? "";
    const second = await list("op", `queue_key=default-q&limit=2&after=${encodeURIComponent(cursor)}`);
    expect(second.body.jobs.map((j) => j.id)).to.deep.equal(ids.slice(2));
    expect(second.body.page_info.has_next_page).to.equal(false);
    const empty = await list("op", "queue_key=empty-q");
    expect(empty.status).to.equal(404);
    await register("op2", "empty-q");
    expect((await list("op2", "queue_key=empty-q")).body.page_info).to.deep.equal({
      has_next_page: false,
      end_cursor: null,
    });
    expect((await list("op", "queue_key=default-q&limit=1001")).status).to.equal(400);
    expect((await list("op", "limit=1")).status).to.equal(400);
  });

  it("treats _default, __default__, ~ and - as the default queue", async () => {
    await register("op", "_default");
    const id = fake.seedJob();
    for (const spelling of ["_default", "__default__", "~", "-", "default"]) {
      const res = await list("op", `queue_key=${encodeURIComponent(spelling)}`);
      expect(
        res.body.jobs.map((j) => j.id),
        spelling,
      ).to.deep.equal([id]);
    }
  });

  it("reports a paused queue as both paused and dispatch_paused", async () => {
    await register("op");
    fake.pauseQueue("default-q");
    expect((await list("op")).body.cluster_queue).to.include({ paused: true, dispatch_paused: true });
    fake.resumeQueue("default-q");
    expect((await list("op")).body.cluster_queue).to.include({ paused: false, dispatch_paused: false });
  });

  it("reserves scheduled jobs, hides them from the listing and reports the rest as not_reserved", async () => {
    await register("op");
    const job = fake.seedJob({ queue_key: "default-q" });
    const res = await reserve("op", [job, "no-such-job"]);
    expect(res.status).to.equal(200);
    expect(res.body).to.deep.equal({ reserved: [job], not_reserved: ["no-such-job"] });
    expect((await list("op")).body.jobs).to.deep.equal([]);
    expect(fake.job(job).state).to.equal("reserved");
    // Reserving again extends the reservation and still reports the job as reserved.
    expect((await reserve("op", [job], 1200)).body.reserved).to.deep.equal([job]);
    expect(fake.job(job).reservation?.expires_at).to.equal(new Date(now + 1_200_000).toISOString());
    expect((await reserve("op", [job], 3601)).status).to.equal(422);
    expect(
      (
        await reserve(
          "op",
          Array.from({ length: 1001 }, (_, i) => String(i)),
        )
      ).status,
    ).to.equal(400);
  });

  it("gives a job to exactly one of two stacks racing to reserve it", async () => {
    await register("op-a");
    await register("op-b");
    const job = fake.seedJob({ queue_key: "default-q" });
    const [a, b] = await Promise.all([reserve("op-a", [job]), reserve("op-b", [job])]);
    expect([a.status, b.status]).to.deep.equal([200, 200]);
    expect([...a.body.reserved, ...b.body.reserved]).to.deep.equal([job]);
    expect([...a.body.not_reserved, ...b.body.not_reserved]).to.deep.equal([job]);
  });

  it("returns a job to scheduled when its reservation expires (driven by the fake's clock)", async () => {
    await register("op");
    const job = fake.seedJob({ queue_key: "default-q" });
    await reserve("op", [job], 60);
    now += 59_999;
    expect((await list("op")).body.jobs).to.deep.equal([]);
    now += 1;
    expect((await list("op")).body.jobs.map((j) => j.id)).to.deep.equal([job]);
    const record = fake.job(job);
    expect(record.state).to.equal("scheduled");
    expect(record.history.map((h) => h.event)).to.deep.equal(["seed", "reserve", "reservation_expired"]);
    // Now another stack may take it.
    await register("op-b");
    expect((await reserve("op-b", [job])).body.reserved).to.deep.equal([job]);
  });

  it("updates the stack's last_connected_on when it polls, and deregisters with 204", async () => {
    await register("op");
    now += 5_000;
    await list("op");
    expect(fake.stacks()[0]).to.include({ last_connected_on: new Date(now).toISOString(), state: "connected" });
    expect((await api.call("POST", "/v3/stacks/op/deregister")).status).to.equal(204);
    expect(fake.stacks()[0]).to.include({ state: "disconnected" });
  });

  it("refuses a 31st active stack with 403", async () => {
    for (let i = 0; i < 30; i++) await register(`op-${i}`);
    const res = await api.call("POST", "/v3/stacks/register", {
      json: { key: "op-30", type: "custom", queue_key: "q", metadata: {} },
    });
    expect(res.status).to.equal(403);
    expect(res.body.message).to.equal("Stack limit exceeded");
  });
});
