import { expect } from "chai";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { BuildkiteApiError } from "./errors.js";
import { StacksClient, cropChars, cropUtf8, escapeSegment, type StacksClientOptions } from "./stacks-client.js";
import {
  capturedLogger,
  settle,
  ScriptedServer,
  type RecordedRequest,
} from "../../../test/support/buildkite-test-helpers.js";
import type { RequestReport } from "./transport.js";
import type { ScheduledJob, Stack } from "./types.js";

const TOKEN = "bkct_test-secret-token";

/** A job as the client returns it: only the fields the operator reads. */
function job(id: string): ScheduledJob {
  return {
    id,
    priority: 0,
    agent_query_rules: ["queue=linux"],
    scheduled_at: "2026-01-01T00:00:00Z",
    pipeline: { slug: "app" },
    build: { number: 1, branch: "main" },
    step: { key: null },
  };
}

/** The same job as Buildkite sends it, with fields the operator ignores. */
function wireJob(id: string): Record<string, unknown> {
  const j = job(id);
  return { ...j, runnable_at: null, pipeline: { ...j.pipeline, uuid: "p-1" }, build: { ...j.build, uuid: "b-1" } };
}

function page(
  ids: string[],
  next: string | null,
  queue: Record<string, unknown> = { id: "q-1", paused: false, dispatch_paused: false },
): Record<string, unknown> {
  return {
    jobs: ids.map(wireJob),
    page_info: { has_next_page: next !== null, end_cursor: next },
    cluster_queue: queue,
  };
}

const uuids = (n: number): string[] => Array.from({ length: n }, (_, i) => `job-${i}`);
const bodyOf = (r: RecordedRequest | undefined): Record<string, unknown> => r?.body as Record<string, unknown>;

describe("StacksClient", () => {
  let server: ScriptedServer;
  let clock: FakeClock;
  let reports: RequestReport[];

  beforeEach(async () => {
    server = await ScriptedServer.start();
    clock = new FakeClock();
    reports = [];
  });
  afterEach(() => server.close());

  function client(overrides: Partial<StacksClientOptions> = {}): StacksClient {
    return new StacksClient({
      endpoint: server.url,
      token: TOKEN,
      clock,
      logger: capturedLogger().logger,
      onRequest: (r) => reports.push(r),
      ...overrides,
    });
  }

  it("sends the token, JSON and user-agent headers and escapes path segments (dots too)", async () => {
    server.reply({ status: 200, json: { id: "a.b/c", env: { A: "1" }, command: "make" } });
    const got = await client().getJob("my.stack", "a.b/c");
    expect(got).to.deep.equal({ id: "a.b/c", env: { A: "1" }, command: "make" });
    const [req] = server.requests;
    expect(req?.method).to.equal("GET");
    expect(req?.path).to.equal("/v3/stacks/my%2Estack/jobs/a%2Eb%2Fc");
    expect(req?.headers.authorization).to.equal(`Token ${TOKEN}`);
    expect(req?.headers.accept).to.equal("application/json");
    expect(req?.headers["content-type"]).to.equal("application/json");
    expect(req?.headers["user-agent"]).to.match(/^buildkite-operator\/\d/);
  });

  it("lets the caller set the user agent and tolerates a trailing slash on the endpoint", async () => {
    server.reply({
      status: 200,
      json: { uuid: "t-1", organization_slug: "o", organization_uuid: "o-1", cluster_uuid: "c-1", cluster_name: "c" },
    });
    const id = await client({ endpoint: `${server.url}/`, userAgent: "buildkite-operator/9.9.9" }).identity();
    expect(id.cluster_uuid).to.equal("c-1");
    expect(server.requests[0]?.path).to.equal("/v3/token");
    expect(server.requests[0]?.headers["user-agent"]).to.equal("buildkite-operator/9.9.9");
  });

  it("registers a custom stack with empty metadata by default, and deregisters it", async () => {
    const stack = {
      id: "s-1",
      organization_uuid: "o-1",
      key: "k",
      type: "custom",
      cluster_queue_key: "linux",
      metadata: {},
      last_connected_on: null,
      state: "connected",
    };
    server.reply({ status: 201, json: stack }, { status: 204 });
    expect(await client().register("k", "linux")).to.deep.equal({
      key: "k",
      cluster_queue_key: "linux",
    } satisfies Stack);
    await client().deregister("k");
    expect(server.requests.map((r) => `${r.method} ${r.path}`)).to.deep.equal([
      "POST /v3/stacks/register",
      "POST /v3/stacks/k/deregister",
    ]);
    expect(server.requests[0]?.body).to.deep.equal({ key: "k", type: "custom", queue_key: "linux", metadata: {} });
    expect(server.requests[1]?.rawBody).to.equal("");
  });

  it("follows end_cursor up to maxPages (2 by default)", async () => {
    server.handler = (req) => {
      const after = req.query.get("after");
      return after === null
        ? { status: 200, json: page(["a", "b"], "c1") }
        : after === "c1"
          ? { status: 200, json: page(["c"], "c2") }
          : { status: 200, json: page(["d"], null) };
    };
    const two = await client().scheduledJobs("k", "_default");
    expect(two).to.deep.equal({ jobs: [job("a"), job("b"), job("c")], paused: false });
    expect(server.requests.map((r) => r.query.toString())).to.deep.equal([
      "queue_key=_default&limit=1000",
      "queue_key=_default&limit=1000&after=c1",
    ]);
    server.requests.length = 0;
    const all = await client().scheduledJobs("k", "_default", { maxPages: 10, limit: 2 });
    expect(all.jobs.map((j) => j.id)).to.deep.equal(["a", "b", "c", "d"]);
    expect(server.requests).to.have.length(3);
    expect(server.requests[0]?.query.get("limit")).to.equal("2");
  });

  it("stops at a null end_cursor even if has_next_page is set", async () => {
    server.reply({ status: 200, json: { ...page(["a"], null), page_info: { has_next_page: true, end_cursor: null } } });
    expect((await client().scheduledJobs("k", "q")).jobs).to.have.length(1);
    expect(server.requests).to.have.length(1);
  });

  it("refuses a page whose job lacks a field the operator reads, naming the endpoint and the field", async () => {
    const broken = {
      ...page(["a", "b"], null),
      jobs: [wireJob("a"), { ...wireJob("b"), build: { uuid: "b-1", number: null } }],
    };
    server.reply({ status: 200, json: broken });
    const err = await client({ maxAttempts: 1 })
      .scheduledJobs("k", "q")
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).to.be.instanceOf(BuildkiteApiError);
    expect((err as BuildkiteApiError).message).to.equal(
      "Buildkite list-scheduled-jobs failed with HTTP 200: response body has an unexpected shape: jobs[1].build.number is null, expected a whole number",
    );
  });

  it("reads the pause flag from either field name", async () => {
    server.reply(
      { status: 200, json: page(["a"], "c1", { id: "q", paused: true }) },
      { status: 200, json: page([], null, { id: "q", dispatch_paused: true }) },
      { status: 200, json: page([], null, { id: "q" }) },
    );
    expect(await client().scheduledJobs("k", "q")).to.deep.equal({ jobs: [job("a")], paused: true });
    // A paused queue runs nothing, so the next page is not read.
    expect(server.requests).to.have.length(1);
    expect((await client().scheduledJobs("k", "q")).paused).to.equal(true);
    expect((await client().scheduledJobs("k", "q")).paused).to.equal(false);
  });

  it("reserves 2500 uuids in chunks of 1000, 1000 and 500", async () => {
    server.handler = (req) => {
      const ids = bodyOf(req).job_uuids as string[];
      return { status: 200, json: { reserved: ids.slice(1), not_reserved: ids.slice(0, 1) } };
    };
    const result = await client().reserve("k", uuids(2500), 900);
    expect(server.requests.map((r) => (bodyOf(r).job_uuids as string[]).length)).to.deep.equal([1000, 1000, 500]);
    expect(
      server.requests.every((r) => r.method === "PUT" && r.path === "/v3/stacks/k/scheduled-jobs/batch-reserve"),
    ).to.equal(true);
    expect(bodyOf(server.requests[0]).reservation_expiry_seconds).to.equal(900);
    expect(result.reserved).to.have.length(2497);
    expect(result.notReserved).to.deep.equal(["job-0", "job-1000", "job-2000"]);
    await client().reserve("k", ["x"]);
    expect(bodyOf(server.requests[3])).to.not.have.property("reservation_expiry_seconds");
  });

  it("makes no call for an empty batch", async () => {
    expect(await client().reserve("k", [])).to.deep.equal({ reserved: [], notReserved: [] });
    expect((await client().getStates("k", [])).size).to.equal(0);
    expect(server.requests).to.have.length(0);
  });

  it("loads states of 2500 uuids in chunks of 1000, 1000 and 500 and leaves out unknown states", async () => {
    server.handler = (req) => {
      const ids = bodyOf(req).job_uuids as string[];
      return {
        status: 200,
        json: { states: Object.fromEntries(ids.map((id) => [id, id === "job-7" ? "teleported" : "running"])) },
      };
    };
    const { logger, lines } = capturedLogger();
    const states = await client({ logger }).getStates("k", uuids(2500));
    expect(server.requests.map((r) => (bodyOf(r).job_uuids as string[]).length)).to.deep.equal([1000, 1000, 500]);
    expect(server.requests[0]?.path).to.equal("/v3/stacks/k/jobs/get-states");
    expect(states.size).to.equal(2499);
    expect(states.get("job-2499")).to.equal("running");
    expect(states.has("job-7")).to.equal(false);
    expect(lines.join("")).to.include("teleported");
  });

  it("finish crops the detail to 4096 UTF-8 bytes and sends exit_status -1 unless told otherwise", async () => {
    server.handler = () => ({ status: 200, json: {} });
    await client().finish("k", "j-1", "é".repeat(3000));
    const detail = bodyOf(server.requests[0]).detail as string;
    expect(Buffer.byteLength(detail)).to.equal(4096);
    expect(detail).to.equal("é".repeat(2048));
    expect(bodyOf(server.requests[0]).exit_status).to.equal(-1);
    expect(server.requests[0]?.path).to.equal("/v3/stacks/k/jobs/j-1/finish");
    await client().finish("k", "j-1", "ok", 0);
    expect(bodyOf(server.requests[1])).to.deep.equal({ exit_status: 0, detail: "ok" });
  });

  it("notify crops details to 255 characters, splits 2500 items into 3 calls and maps error indexes back", async () => {
    server.handler = () => ({ status: 200, json: { errors: [{ error: "job not found", indexes: [0, 1] }] } });
    const at = new Date(Date.UTC(2026, 0, 1, 12));
    const items = uuids(2500).map((jobUuid) => ({ jobUuid, detail: "x".repeat(300), timestamp: at }));
    const result = await client().notify("k", items);
    const sent = server.requests.map(
      (r) => bodyOf(r).notifications as { job_uuid: string; detail: string; timestamp: string }[],
    );
    expect(sent.map((n) => n.length)).to.deep.equal([1000, 1000, 500]);
    expect(sent[0]?.[0]).to.deep.equal({
      job_uuid: "job-0",
      detail: "x".repeat(255),
      timestamp: "2026-01-01T12:00:00.000Z",
    });
    expect(result.errors.map((e) => e.indexes)).to.deep.equal([
      [0, 1],
      [1000, 1001],
      [2000, 2001],
    ]);
    await client().notify("k", [{ jobUuid: "j", detail: "d" }]);
    expect(bodyOf(server.requests[3])).to.deep.equal({ notifications: [{ job_uuid: "j", detail: "d" }] });
  });

  it("reports every attempt to onRequest with its endpoint scope and status", async () => {
    server.reply({ status: 503, json: { message: "busy" } }, { status: 200, json: { states: {} } });
    await settle(clock, client().getStates("k", ["a"]));
    expect(reports.map((r) => [r.endpoint, r.status])).to.deep.equal([
      ["batch-load-job-states", 503],
      ["batch-load-job-states", 200],
    ]);
    expect(reports.every((r) => r.durationMs >= 0)).to.equal(true);
  });
});

describe("request helpers", () => {
  it("escapeSegment escapes reserved characters and dots", () => {
    expect(escapeSegment("a.b/c d?")).to.equal("a%2Eb%2Fc%20d%3F");
  });

  it("cropUtf8 never splits a character", () => {
    expect(cropUtf8("short", 10)).to.equal("short");
    expect(cropUtf8("a€b", 3)).to.equal("a");
    expect(cropUtf8("😀😀", 7)).to.equal("😀");
  });

  it("cropChars never splits a surrogate pair", () => {
    expect(cropChars("abc", 5)).to.equal("abc");
    expect(cropChars("ab😀", 3)).to.equal("ab");
    expect(cropChars("x".repeat(300), 255)).to.have.length(255);
  });
});
