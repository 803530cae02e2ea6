import { expect } from "chai";
import {
  decodeIdentity,
  decodeJob,
  decodeJobTokens,
  decodeNotifications,
  decodeReserve,
  decodeScheduledJobsPage,
  decodeStack,
  decodeStates,
  ShapeError,
} from "./decode.js";

type Json = Record<string, unknown>;

/** A scheduled job as Buildkite sends it (§1.4 S3), fields the operator ignores included. */
const wireJob = (): Json => ({
  id: "0190a8f4-52c1-4b8e-9d4a-3f1c2b7e6a10",
  priority: 3,
  agent_query_rules: ["queue=linux"],
  scheduled_at: "2026-01-01T00:00:00Z",
  runnable_at: null,
  pipeline: { slug: "app", uuid: "p-1" },
  build: { uuid: "b-1", number: 42, branch: "main" },
  step: { key: "test" },
});
const wirePage = (job: Json = wireJob()): Json => ({
  jobs: [job],
  page_info: { has_next_page: false, end_cursor: null },
  cluster_queue: { id: "q-1", paused: false },
});

/** `body` with the value at `path` (dotted; `jobs.0` indexes) replaced, or removed when `value` is undefined. */
function mutate(body: Json, path: string, value: unknown): Json {
  const copy = structuredClone(body);
  const keys = path.split(".");
  const last = keys.pop() ?? "";
  let node: Json = copy;
  for (const k of keys) node = node[k] as Json;
  if (value === undefined) Reflect.deleteProperty(node, last);
  else node[last] = value;
  return copy;
}

function shapeError(decode: () => unknown): ShapeError {
  try {
    decode();
  } catch (err) {
    if (err instanceof ShapeError) return err;
    throw err;
  }
  throw new Error("expected a ShapeError");
}

describe("Stacks API decoders", () => {
  it("keep exactly the fields the operator reads from a scheduled-jobs page", () => {
    expect(decodeScheduledJobsPage(wirePage())).to.deep.equal({
      jobs: [
        {
          id: "0190a8f4-52c1-4b8e-9d4a-3f1c2b7e6a10",
          priority: 3,
          agent_query_rules: ["queue=linux"],
          scheduled_at: "2026-01-01T00:00:00Z",
          pipeline: { slug: "app" },
          build: { number: 42, branch: "main" },
          step: { key: "test" },
        },
      ],
      page_info: { has_next_page: false, end_cursor: null },
      cluster_queue: { paused: false, dispatch_paused: null },
    });
  });

  it("read a null or absent branch, step key, cursor or pause flag as null", () => {
    const job = mutate(mutate(wireJob(), "build.branch", null), "step.key", undefined);
    const page = decodeScheduledJobsPage(
      mutate(mutate(wirePage(job), "page_info.end_cursor", undefined), "cluster_queue.paused", null),
    );
    expect([
      page.jobs[0]?.build.branch,
      page.jobs[0]?.step.key,
      page.page_info.end_cursor,
      page.cluster_queue.paused,
    ]).to.deep.equal([null, null, null, null]);
  });

  it("name the field of a scheduled job that is missing or of the wrong type", () => {
    const cases: [string, unknown, string][] = [
      ["pipeline", undefined, "jobs[0].pipeline is missing, expected an object"],
      ["pipeline", null, "jobs[0].pipeline is null, expected an object"],
      ["pipeline.slug", 7, "jobs[0].pipeline.slug is a number, expected a string"],
      ["build", "42", "jobs[0].build is a string, expected an object"],
      ["build.number", 4.2, "jobs[0].build.number is a number, expected a whole number"],
      ["build.number", "42", "jobs[0].build.number is a string, expected a whole number"],
      ["build.branch", false, "jobs[0].build.branch is a boolean, expected a string or null"],
      ["step", [], "jobs[0].step is an array, expected an object"],
      ["step.key", {}, "jobs[0].step.key is an object, expected a string or null"],
      ["id", undefined, "jobs[0].id is missing, expected a string"],
      ["priority", null, "jobs[0].priority is null, expected a whole number"],
      ["agent_query_rules", ["queue=linux", 1], "jobs[0].agent_query_rules[1] is a number, expected a string"],
      ["scheduled_at", 0, "jobs[0].scheduled_at is a number, expected a string"],
    ];
    for (const [path, value, message] of cases) {
      expect(
        shapeError(() => decodeScheduledJobsPage(wirePage(mutate(wireJob(), path, value)))).message,
        path,
      ).to.equal(message);
    }
  });

  it("name the field of the page around the jobs", () => {
    expect(shapeError(() => decodeScheduledJobsPage([])).message).to.equal("body is an array, expected an object");
    expect(shapeError(() => decodeScheduledJobsPage(mutate(wirePage(), "jobs", undefined))).message).to.equal(
      "jobs is missing, expected an array",
    );
    expect(shapeError(() => decodeScheduledJobsPage(mutate(wirePage(), "page_info", undefined))).field).to.equal(
      "page_info",
    );
    expect(
      shapeError(() => decodeScheduledJobsPage(mutate(wirePage(), "page_info.has_next_page", "no"))).field,
    ).to.equal("page_info.has_next_page");
    expect(
      shapeError(() => decodeScheduledJobsPage(mutate(wirePage(), "cluster_queue.dispatch_paused", 1))).field,
    ).to.equal("cluster_queue.dispatch_paused");
    expect(shapeError(() => decodeScheduledJobsPage(mutate(wirePage(), "cluster_queue", null))).field).to.equal(
      "cluster_queue",
    );
  });

  it("check the token identity and the registered stack", () => {
    const identity = { uuid: "t-1", organization_slug: "o", cluster_uuid: null };
    expect(decodeIdentity(identity)).to.deep.equal({ uuid: "t-1", cluster_uuid: null, cluster_name: null });
    expect(shapeError(() => decodeIdentity({ ...identity, uuid: 1 })).field).to.equal("uuid");
    expect(shapeError(() => decodeIdentity({ ...identity, cluster_uuid: 1 })).field).to.equal("cluster_uuid");
    expect(shapeError(() => decodeIdentity({ ...identity, cluster_name: [] })).field).to.equal("cluster_name");
    expect(shapeError(() => decodeIdentity("t-1")).field).to.equal("body");
    expect(decodeStack({ id: "s", key: "k", cluster_queue_key: "linux", state: "connected" })).to.deep.equal({
      key: "k",
      cluster_queue_key: "linux",
    });
    expect(shapeError(() => decodeStack({ key: "k" })).message).to.equal(
      "cluster_queue_key is missing, expected a string",
    );
    expect(shapeError(() => decodeStack({ key: null, cluster_queue_key: "linux" })).field).to.equal("key");
  });

  it("check reservations, states and job details", () => {
    expect(decodeReserve({ reserved: ["a"] })).to.deep.equal({ reserved: ["a"], not_reserved: [] });
    expect(shapeError(() => decodeReserve({ not_reserved: [] })).field).to.equal("reserved");
    expect(shapeError(() => decodeReserve({ reserved: [], not_reserved: [null] })).field).to.equal("not_reserved[0]");
    expect(decodeStates({ states: { a: "running" } })).to.deep.equal({ states: { a: "running" } });
    expect(shapeError(() => decodeStates({ states: { a: 1 } })).message).to.equal(
      'states["a"] is a number, expected a string',
    );
    expect(shapeError(() => decodeStates({ states: [] })).field).to.equal("states");
    expect(decodeJob({ id: "j", env: { A: "1" }, command: null })).to.deep.equal({
      id: "j",
      env: { A: "1" },
      command: "",
    });
    expect(shapeError(() => decodeJob({ id: "j", env: { A: 1 }, command: "make" })).field).to.equal('env["A"]');
    expect(shapeError(() => decodeJob({ id: "j", env: { A: "1" }, command: 1 })).field).to.equal("command");
    expect(shapeError(() => decodeJob({ id: "j", command: "make" })).field).to.equal("env");
  });

  it("check job tokens and notification errors, never quoting a value", () => {
    const token = { job_uuid: "j", job_acquisition_token: "bkaj_secret", expires_at: "2026-01-01T00:15:00Z" };
    expect(decodeJobTokens({ job_acquisition_tokens: [token] })).to.deep.equal({
      job_acquisition_tokens: [token],
      not_issued: [],
    });
    const missing = shapeError(() =>
      decodeJobTokens({ job_acquisition_tokens: [{ ...token, expires_at: undefined }] }),
    );
    expect(missing.message).to.equal("job_acquisition_tokens[0].expires_at is missing, expected a string");
    const wrong = shapeError(() =>
      decodeJobTokens({ job_acquisition_tokens: [{ ...token, job_uuid: ["bkaj_secret"] }] }),
    );
    expect(wrong.message).to.not.include("bkaj_secret");
    expect(shapeError(() => decodeJobTokens({ job_acquisition_tokens: [], not_issued: "j" })).field).to.equal(
      "not_issued",
    );
    expect(shapeError(() => decodeJobTokens({ not_issued: [] })).field).to.equal("job_acquisition_tokens");
    expect(decodeNotifications({})).to.deep.equal({ errors: [] });
    expect(shapeError(() => decodeNotifications({ errors: [{ error: "gone", indexes: [0, "1"] }] })).field).to.equal(
      "errors[0].indexes[1]",
    );
    expect(shapeError(() => decodeNotifications({ errors: [{ indexes: [] }] })).field).to.equal("errors[0].error");
  });
});
