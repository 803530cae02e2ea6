import { expect } from "chai";
import { FakeBuildkite } from "./server.js";
import { FakeApiClient } from "./test-client.js";

describe("fake Buildkite server: rate limits, faults, auth, request log, control API", () => {
  let now: number;
  let fake: FakeBuildkite;
  let api: FakeApiClient;

  beforeEach(async () => {
    now = Date.UTC(2026, 0, 1);
    fake = await FakeBuildkite.start({ clock: () => now, rateLimits: true });
    api = new FakeApiClient(fake.url, fake.agentToken);
    await api.call("POST", "/v3/stacks/register", {
      json: { key: "op", type: "custom", queue_key: "default-q", metadata: {} },
    });
  });
  afterEach(async () => {
    await fake.stop();
  });

  const list = (): ReturnType<FakeApiClient["call"]> =>
    api.call("GET", "/v3/stacks/op/scheduled-jobs?queue_key=default-q");

  it("limits listing to 10 per second per stack with 429, Retry-After and RateLimit headers", async () => {
    for (let i = 1; i <= 10; i++) {
      const ok = await list();
      expect(ok.status).to.equal(200);
      expect(ok.headers.get("ratelimit-scope")).to.equal("list-scheduled-jobs");
      expect(ok.headers.get("ratelimit-limit")).to.equal("10");
      expect(ok.headers.get("ratelimit-remaining")).to.equal(String(10 - i));
      expect(ok.headers.get("ratelimit-reset")).to.equal("1");
    }
    const limited = await list();
    expect(limited.status).to.equal(429);
    expect(limited.headers.get("retry-after")).to.equal("1");
    expect(limited.body).to.deep.equal({
      message: "You have exceeded your API rate limit. Please wait 1 seconds before making more requests.",
      scope: "list-scheduled-jobs",
      limit: 10,
      current: 11,
      reset: 1,
    });
    // Other scopes and other stacks have their own windows.
    expect((await api.call("POST", "/v3/stacks/op/jobs/get-states", { json: { job_uuids: [] } })).status).to.equal(200);
    // The window slides with the fake's clock.
    now += 1000;
    expect((await list()).status).to.equal(200);
  });

  it("sends RateLimit headers but never 429 when rate limiting is switched off", async () => {
    fake.setRateLimits(false);
    for (let i = 0; i < 12; i++) expect((await list()).status).to.equal(200);
    expect((await list()).headers.get("ratelimit-remaining")).to.equal("0");
  });

  it("injects a 503 with Retry-After for the next request only, then serves normally", async () => {
    fake.injectFault({ route: "stacks.scheduled-jobs", status: 503, retry_after: 2 });
    const failed = await list();
    expect(failed.status).to.equal(503);
    expect(failed.headers.get("retry-after")).to.equal("2");
    expect(failed.body).to.deep.equal({ message: "injected fault" });
    expect((await list()).status).to.equal(200);
  });

  it("injects an HTML body, counts, latency, and faults through the control API", async () => {
    fake.injectFault({ route: "agent.register", status: 502, count: 2, body: "<html>bad gateway</html>" });
    for (let i = 0; i < 2; i++) {
      const res = await api.call("POST", "/v3/register", { json: {} });
      expect(res.status).to.equal(502);
      expect(res.text).to.equal("<html>bad gateway</html>");
      expect(res.headers.get("content-type")).to.match(/text\/html/);
    }
    expect((await api.call("POST", "/v3/register", { json: {} })).status).to.equal(200);
    const armed = await api.call("POST", "/_fake/faults", {
      json: { route: "stacks.scheduled-jobs", delay_ms: 50 },
      token: null,
    });
    expect(armed.status).to.equal(201);
    const started = performance.now();
    expect((await list()).status).to.equal(200);
    expect(performance.now() - started).to.be.at.least(45);
    expect((await api.call("POST", "/_fake/faults", { json: { route: "x" }, token: null })).status).to.equal(422);
  });

  it("accepts only agent tokens on Stacks routes and only session tokens on agent session routes", async () => {
    const registered = await api.call<{ access_token: string }>("POST", "/v3/register", {
      json: { meta_data: ["queue=default-q"] },
    });
    const session = api.withToken(registered.body.access_token);
    const onStacks = await session.call("GET", "/v3/stacks/op/scheduled-jobs?queue_key=default-q");
    expect(onStacks.status).to.equal(401);
    expect(onStacks.body.message).to.equal("this endpoint does not accept a session token");
    expect((await api.call("GET", "/v3/ping")).status).to.equal(401);
    expect((await session.call("GET", "/v3/ping")).body).to.deep.equal({ action: "idle" });
    fake.revokeToken(fake.agentToken);
    expect((await list()).status).to.equal(401);
  });

  it("logs requests with route and token class but never a token value", async () => {
    const registered = await api.call<{ access_token: string }>("POST", "/v3/register", {
      json: { name: "a", meta_data: [] },
    });
    await api.withToken(registered.body.access_token).call("POST", "/v3/connect");
    await api.call("GET", "/v3/nowhere", { token: null });
    await api.call("GET", "/_fake/jobs", { token: null });
    const log = fake.requests();
    expect(log.map((r) => [r.method, r.path, r.route, r.token_class, r.status])).to.deep.equal([
      ["POST", "/v3/stacks/register", "stacks.register", "agent", 201],
      ["POST", "/v3/register", "agent.register", "agent", 200],
      ["POST", "/v3/connect", "agent.connect", "session", 200],
      ["GET", "/v3/nowhere", null, "none", 404],
    ]);
    expect(log[1]?.body).to.deep.equal({ name: "a", meta_data: [] });
    const text = JSON.stringify(log);
    expect(text).not.to.include(fake.agentToken);
    expect(text).not.to.include(registered.body.access_token);
    expect(log[0]?.headers).not.to.have.property("authorization");
  });

  it("answers unknown routes with 404 not implemented in fake, and URL-decodes path segments", async () => {
    const unknown = await api.call("POST", "/v3/jobs/x/data/set", { json: { key: "k", value: "v" } });
    expect(unknown.status).to.equal(404);
    expect(unknown.body).to.deep.equal({ message: "not implemented in fake" });
    const escaped = await api.call("GET", "/v3/stacks/%6Fp/scheduled-jobs?queue_key=default-q");
    expect(escaped.status).to.equal(200);
    // Clients escape "." as %2E in path segments (§1.4 "Path escaping").
    const dotted = fake.seedJob({ id: "job.with.dots", queue_key: "default-q" });
    const shown = await api.call("GET", `/v3/stacks/op/jobs/${dotted.replaceAll(".", "%2E")}`);
    expect(shown.status).to.equal(200);
    expect(shown.body).to.include({ id: "job.with.dots" });
    expect((await api.call("GET", "/v3/stacks/op/jobs/%E0%A4%A")).status).to.equal(400);
  });

  it("seeds, reads and cancels jobs through the control API, and counts them in /v3/metrics", async () => {
    const seeded = await api.call<{ id: string; state: string; env: Record<string, string> }>("POST", "/_fake/jobs", {
      json: { queue_key: "default-q", command: "echo hi", env: { FOO: "bar" } },
      token: null,
    });
    expect(seeded.status).to.equal(201);
    expect(seeded.body.state).to.equal("scheduled");
    expect(seeded.body.env).to.include({ FOO: "bar", BUILDKITE_COMMAND: "echo hi" });
    const canceled = await api.call("POST", `/_fake/jobs/${seeded.body.id}/cancel`, { token: null });
    expect(canceled.body).to.include({ state: "canceled" });
    expect((await api.call("POST", `/_fake/jobs/${seeded.body.id}/cancel`, { token: null })).status).to.equal(422);
    expect((await api.call("GET", "/_fake/jobs/nope", { token: null })).status).to.equal(404);
    expect((await api.call("POST", "/_fake/jobs", { json: { state: "running" }, token: null })).status).to.equal(422);
    fake.seedJob({ queue_key: "default-q" });
    const metrics = await api.call<{ jobs: { scheduled: number; queues: Record<string, { scheduled: number }> } }>(
      "GET",
      "/v3/metrics",
    );
    expect(metrics.body.jobs.scheduled).to.equal(1);
    expect(metrics.body.jobs.queues["default-q"]?.scheduled).to.equal(1);
    const token = await api.call<{ token: string }>("POST", "/_fake/tokens", {
      json: { token: "bkct_extra" },
      token: null,
    });
    expect(token.body.token).to.equal("bkct_extra");
    expect((await api.withToken("bkct_extra").call("GET", "/v3/token")).body).to.include({
      cluster_name: "fake-cluster",
    });
  });
});
