import { expect } from "chai";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { ShapeError } from "./decode.js";
import { BuildkiteApiError } from "./errors.js";
import { StacksClient, type StacksClientOptions } from "./stacks-client.js";
import {
  capturedLogger,
  rejection,
  settle,
  ScriptedServer,
  turn,
  until,
} from "../../../test/support/buildkite-test-helpers.js";
import { parseRetryAfterMs, retryDelayMs } from "./transport.js";

const TOKEN = "bkct_very-secret-token-value";
const IDENTITY = {
  uuid: "t-1",
  organization_slug: "o",
  organization_uuid: "o-1",
  cluster_uuid: "c-1",
  cluster_name: "c",
};

describe("StacksClient retries", () => {
  let server: ScriptedServer;
  let clock: FakeClock;

  beforeEach(async () => {
    server = await ScriptedServer.start();
    clock = new FakeClock();
  });
  afterEach(() => server.close());

  function client(overrides: Partial<StacksClientOptions> = {}): StacksClient {
    return new StacksClient({
      endpoint: server.url,
      token: TOKEN,
      clock,
      logger: capturedLogger().logger,
      ...overrides,
    });
  }

  it("waits exactly Retry-After (2 s) after a 429, not less, then succeeds", async () => {
    server.reply(
      { status: 429, json: { message: "rate limited", scope: "token" }, headers: { "Retry-After": "2" } },
      { status: 200, json: IDENTITY },
    );
    const result = client().identity();
    await until(() => clock.pending === 1, "the retry timer");
    clock.advance(1999);
    await turn(50);
    expect(server.requests).to.have.length(1);
    clock.advance(1);
    expect(await result).to.deep.equal({ uuid: "t-1", cluster_uuid: "c-1", cluster_name: "c" });
    expect(server.requests).to.have.length(2);
  });

  it("retries 503 and gives up after maxAttempts with a retryable BuildkiteApiError", async () => {
    server.handler = () => ({ status: 503, json: { message: "organization temporarily unavailable" } });
    const err = await rejection(settle(clock, client({ maxAttempts: 3 }).scheduledJobs("k", "q")));
    expect(err).to.be.instanceOf(BuildkiteApiError);
    const api = err as BuildkiteApiError;
    expect([api.status, api.retryable, api.endpoint, api.serverMessage]).to.deep.equal([
      503,
      true,
      "list-scheduled-jobs",
      "organization temporarily unavailable",
    ]);
    expect(server.requests).to.have.length(3);
  });

  it("uses 5 attempts by default", async () => {
    server.handler = () => ({ status: 500, text: "oops" });
    await rejection(settle(clock, client().identity()));
    expect(server.requests).to.have.length(5);
  });

  for (const status of [400, 401, 403, 404, 422]) {
    it(`does not retry ${status}`, async () => {
      server.handler = () => ({ status, json: { message: `nope ${status}` } });
      const err = (await rejection(client().reserve("k", ["a"]))) as BuildkiteApiError;
      expect([err.status, err.retryable, err.endpoint, err.serverMessage]).to.deep.equal([
        status,
        false,
        "batch-reserve",
        `nope ${status}`,
      ]);
      expect(server.requests).to.have.length(1);
      expect(clock.pending).to.equal(0);
    });
  }

  it("retries a 200 whose body is not JSON", async () => {
    server.reply(
      { status: 200, text: "<html>proxy</html>" },
      { status: 200, json: { reserved: ["a"], not_reserved: [] } },
    );
    expect(await settle(clock, client().reserve("k", ["a"]))).to.deep.equal({ reserved: ["a"], notReserved: [] });
    expect(server.requests).to.have.length(2);
  });

  it("retries a 200 of the wrong shape, then reports it as retryable", async () => {
    server.handler = () => ({ status: 200, json: { unexpected: true } });
    const err = (await rejection(settle(clock, client({ maxAttempts: 2 }).getStates("k", ["a"])))) as BuildkiteApiError;
    expect([err.status, err.retryable, err.endpoint]).to.deep.equal([200, true, "batch-load-job-states"]);
    expect(err.message).to.equal(
      "Buildkite batch-load-job-states failed with HTTP 200: response body has an unexpected shape: states is missing, expected an object",
    );
    expect(err.cause).to.be.instanceOf(ShapeError);
  });

  it("retries network errors and reports them with status error", async () => {
    const url = server.url;
    await server.close();
    const statuses: (number | "error")[] = [];
    const err = (await rejection(
      settle(clock, client({ endpoint: url, maxAttempts: 2, onRequest: (r) => statuses.push(r.status) }).identity()),
    )) as BuildkiteApiError;
    expect([err.status, err.retryable]).to.deep.equal([undefined, true]);
    expect(err.cause).to.exist;
    expect(statuses).to.deep.equal(["error", "error"]);
    server = await ScriptedServer.start();
  });

  it("times out a request that gets no answer", async () => {
    server.reply({ status: 200, hang: true });
    const err = (await rejection(client({ timeoutMs: 50, maxAttempts: 1 }).identity())) as BuildkiteApiError;
    expect([err.status, err.retryable]).to.deep.equal([undefined, true]);
    expect(err.message).to.include("timed out after 50 ms");
  });

  it("never puts the token in error messages or logs, even when the server echoes it", async () => {
    const { logger, lines } = capturedLogger();
    const bk = client({ logger, maxAttempts: 2 });
    const errors: unknown[] = [];
    server.reply({ status: 401, json: { message: `Invalid token ${TOKEN}` } });
    errors.push(await rejection(bk.identity()));
    server.handler = () => ({ status: 503, text: `upstream saw Authorization: Token ${TOKEN}` });
    errors.push(await rejection(settle(clock, bk.finish("k", "j", "d"))));
    await server.close();
    errors.push(await rejection(settle(clock, bk.identity())));
    server = await ScriptedServer.start();
    await turn(10);
    expect(lines.length).to.be.greaterThan(0);
    for (const err of errors) {
      const e = err as BuildkiteApiError;
      expect(`${e.message} ${e.stack ?? ""} ${e.serverMessage ?? ""} ${JSON.stringify(e)}`).to.not.include(TOKEN);
    }
    expect((errors[0] as BuildkiteApiError).serverMessage).to.equal("Invalid token [redacted]");
    expect(lines.join("\n")).to.not.include(TOKEN);
  });
});

describe("retry timing", () => {
  it("parses Retry-After seconds, with decimals or a trailing s, and ignores dates", () => {
    expect(parseRetryAfterMs("2")).to.equal(2000);
    expect(parseRetryAfterMs("1.5")).to.equal(1500);
    expect(parseRetryAfterMs("3s")).to.equal(3000);
    expect(parseRetryAfterMs("Wed, 21 Oct 2026 07:28:00 GMT")).to.equal(undefined);
    expect(parseRetryAfterMs(null)).to.equal(undefined);
    expect(parseRetryAfterMs("86400")).to.equal(60_000);
  });

  it("backs off exponentially from 1 s with jitter 0.5–1, capped at 30 s", () => {
    expect(retryDelayMs(1, undefined, () => 0)).to.equal(500);
    expect(retryDelayMs(1, undefined, () => 1)).to.equal(1000);
    expect(retryDelayMs(3, undefined, () => 1)).to.equal(4000);
    expect(retryDelayMs(10, undefined, () => 1)).to.equal(30_000);
    expect(retryDelayMs(10, undefined, () => 0)).to.equal(15_000);
    expect(retryDelayMs(4, 2000, () => 0)).to.equal(2000);
  });
});
