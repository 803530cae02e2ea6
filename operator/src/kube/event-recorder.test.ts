import { ApiException, type CoreV1Event } from "@kubernetes/client-node";
import { expect } from "chai";
import { Writable } from "node:stream";
import { createLogger } from "../observability/logger.js";
import { FakeClock } from "../../../test/support/fake-clock.js";
import {
  AGGREGATE_WINDOW_MS,
  EventRecorder,
  MAX_MESSAGE_BYTES,
  MAX_TRACKED_SERIES,
  cropUtf8,
  type EventTarget,
  type EventsApi,
} from "./event-recorder.js";

type CreateRequest = Parameters<EventsApi["createNamespacedEvent"]>[0];
type PatchRequest = Parameters<EventsApi["patchNamespacedEvent"]>[0];

const MINUTE = 60_000;

/** Lets already-settled promise chains run; never used to wait for something that has to happen. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

/**
 * The Events endpoint in memory: stores created Events and applies merge patches (404 for a missing Event, 409 for
 * a name taken), can be told to fail the next calls, or to hold every call until released.
 */
class FakeEventsApi implements EventsApi {
  readonly calls: string[] = [];
  readonly stored = new Map<string, CoreV1Event>();
  /** Errors the next calls throw, one each. */
  readonly failures: Error[] = [];
  private gate: Promise<void> | undefined;

  async createNamespacedEvent(req: CreateRequest): Promise<CoreV1Event> {
    const key = `${req.namespace}/${req.body.metadata.name ?? ""}`;
    await this.called(`create ${key} count=${String(req.body.count)}`);
    if (this.stored.has(key)) throw new ApiException(409, "Conflict", { reason: "AlreadyExists" }, {});
    this.stored.set(key, structuredClone(req.body));
    return req.body;
  }

  async patchNamespacedEvent(req: PatchRequest): Promise<CoreV1Event> {
    const key = `${req.namespace}/${req.name}`;
    const patch = req.body as { count: number; lastTimestamp: Date };
    await this.called(`patch ${key} count=${String(patch.count)}`);
    const event = this.stored.get(key);
    if (!event) throw new ApiException(404, "Not Found", { reason: "NotFound" }, {});
    Object.assign(event, patch);
    return event;
  }

  /** Holds every call until the returned function is called. */
  hold(): () => void {
    let release = (): void => undefined;
    this.gate = new Promise((resolve) => {
      release = () => {
        this.gate = undefined;
        resolve();
      };
    });
    return release;
  }

  only(): CoreV1Event {
    expect(this.stored.size).to.equal(1);
    return [...this.stored.values()][0] ?? expect.fail("no Event stored");
  }

  private async called(call: string): Promise<void> {
    if (this.gate) await this.gate;
    this.calls.push(call);
    const failure = this.failures.shift();
    if (failure !== undefined) throw failure;
  }
}

const queue = (name = "q1", uid = `uid-${name}`): EventTarget => ({
  apiVersion: "buildkite.com/v1alpha1",
  kind: "BuildkiteQueue",
  metadata: { name, namespace: "ns", uid, resourceVersion: "42" },
});

describe("EventRecorder", () => {
  let clock: FakeClock;
  let api: FakeEventsApi;
  let logs: { level: string; message: string }[];
  let recorder: EventRecorder;
  /** The log lines written so far (winston hands them to its stream asynchronously). */
  const logged = async (): Promise<string[]> => {
    await new Promise((resolve) => setImmediate(resolve));
    return logs.map((l) => `${l.level}: ${l.message}`);
  };

  beforeEach(() => {
    clock = new FakeClock();
    api = new FakeEventsApi();
    logs = [];
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logs.push(JSON.parse(chunk.toString()) as { level: string; message: string });
        done();
      },
    });
    recorder = new EventRecorder({
      core: api,
      component: "buildkite-operator",
      instance: "operator-0",
      clock,
      logger: createLogger("debug", stream),
    });
  });

  it("creates an Event describing the object on the first record", async () => {
    recorder.record(queue(), "Warning", "AgentTokenSecretMissing", "Secret agent-token not found");
    await recorder.flush();
    const event = api.only();
    expect(event.metadata.namespace).to.equal("ns");
    expect(event.metadata.name).to.match(/^q1\.[0-9a-f]{16}$/);
    expect(event.involvedObject).to.deep.equal({
      apiVersion: "buildkite.com/v1alpha1",
      kind: "BuildkiteQueue",
      name: "q1",
      namespace: "ns",
      uid: "uid-q1",
      resourceVersion: "42",
    });
    expect(event).to.include({
      type: "Warning",
      reason: "AgentTokenSecretMissing",
      message: "Secret agent-token not found",
      count: 1,
    });
    expect(event).to.include({ reportingComponent: "buildkite-operator", reportingInstance: "operator-0" });
    expect(event.source).to.deep.equal({ component: "buildkite-operator" });
    expect(event.firstTimestamp).to.deep.equal(clock.now());
    expect(event.lastTimestamp).to.deep.equal(clock.now());
    // Legacy-style (as client-go's tools/record): eventTime would oblige the events.k8s.io series fields.
    expect(event.eventTime).to.equal(undefined);
  });

  it("counts repeats within ten minutes of the last one on the same Event", async () => {
    const start = clock.now();
    recorder.record(queue(), "Normal", "Ready", "ready");
    await recorder.flush();
    clock.advance(5 * MINUTE);
    recorder.record(queue(), "Normal", "Ready", "ready");
    await recorder.flush();
    clock.advance(AGGREGATE_WINDOW_MS - 1);
    recorder.record(queue(), "Normal", "Ready", "ready");
    await recorder.flush();

    const name = api.only().metadata.name ?? "";
    expect(api.calls).to.deep.equal([
      `create ns/${name} count=1`,
      `patch ns/${name} count=2`,
      `patch ns/${name} count=3`,
    ]);
    expect(api.only()).to.include({ count: 3 });
    expect(api.only().firstTimestamp).to.deep.equal(start);
    expect(api.only().lastTimestamp).to.deep.equal(clock.now());
  });

  it("creates a new Event once ten minutes pass without a repeat", async () => {
    recorder.record(queue(), "Normal", "Ready", "ready");
    await recorder.flush();
    clock.advance(AGGREGATE_WINDOW_MS);
    recorder.record(queue(), "Normal", "Ready", "ready");
    await recorder.flush();
    expect(api.calls.map((c) => c.split(" ")[0])).to.deep.equal(["create", "create"]);
    expect([...api.stored.values()].map((e) => e.count)).to.deep.equal([1, 1]);
  });

  it("keeps apart what differs in object, type, reason or message", async () => {
    recorder.record(queue(), "Normal", "Ready", "ready");
    recorder.record(queue("q1", "uid-recreated"), "Normal", "Ready", "ready");
    recorder.record(queue("q2"), "Normal", "Ready", "ready");
    recorder.record(queue(), "Warning", "Ready", "ready");
    recorder.record(queue(), "Normal", "NotReady", "ready");
    recorder.record(queue(), "Normal", "Ready", "ready again");
    await recorder.flush();
    expect(api.stored.size).to.equal(6);
    expect(api.calls.every((c) => c.startsWith("create"))).to.equal(true);
  });

  it("writes a series one call at a time, folding repeats made meanwhile into one patch", async () => {
    const release = api.hold();
    recorder.record(queue(), "Normal", "Ready", "ready");
    await settle();
    recorder.record(queue(), "Normal", "Ready", "ready");
    recorder.record(queue(), "Normal", "Ready", "ready");
    release();
    await recorder.flush();
    const name = api.only().metadata.name ?? "";
    expect(api.calls).to.deep.equal([`create ns/${name} count=1`, `patch ns/${name} count=3`]);
  });

  it("never blocks the caller, and flush waits for the writes in flight", async () => {
    const release = api.hold();
    recorder.record(queue(), "Normal", "Ready", "ready");
    let flushed = false;
    const flushing = recorder.flush().then(() => {
      flushed = true;
    });
    await settle();
    expect(flushed).to.equal(false);
    expect(api.stored.size).to.equal(0);
    release();
    await flushing;
    expect(api.stored.size).to.equal(1);
  });

  it("never throws, logs a run of failures once, and tries a failed create again on the next repeat", async () => {
    api.failures.push(
      new ApiException(403, "Forbidden", { message: "events is forbidden" }, {}),
      new Error("socket hang up"),
    );
    expect(() => {
      recorder.record(queue(), "Normal", "Ready", "ready");
    }).to.not.throw();
    recorder.record(queue("q2"), "Normal", "Ready", "ready");
    await recorder.flush();
    expect(api.stored.size).to.equal(0);
    expect(await logged()).to.deep.equal([
      "warn: Failed to record event; further failures are logged at debug level until a write succeeds",
      "debug: Failed to record event",
    ]);

    recorder.record(queue(), "Normal", "Ready", "ready");
    await recorder.flush();
    expect(api.only()).to.include({ count: 2 });
    api.failures.push(new Error("socket hang up"));
    recorder.record(queue("q3"), "Normal", "Ready", "ready");
    await recorder.flush();
    expect((await logged()).slice(2)).to.deep.equal([
      "info: Recorded events again after failures",
      "warn: Failed to record event; further failures are logged at debug level until a write succeeds",
    ]);
  });

  it("creates the Event again when it expired or was deleted", async () => {
    recorder.record(queue(), "Normal", "Ready", "ready");
    await recorder.flush();
    const name = api.only().metadata.name ?? "";
    api.stored.clear();
    clock.advance(MINUTE);
    recorder.record(queue(), "Normal", "Ready", "ready");
    await recorder.flush();
    expect(api.calls).to.deep.equal([
      `create ns/${name} count=1`,
      `patch ns/${name} count=2`,
      `create ns/${name} count=2`,
    ]);
    expect(api.only()).to.include({ count: 2 });
  });

  it("forgets series after the window and never tracks more than its bound", async () => {
    for (let i = 0; i < 10; i++) recorder.record(queue(`q${String(i)}`), "Normal", "Ready", "ready");
    expect(recorder.tracked).to.equal(10);
    clock.advance(AGGREGATE_WINDOW_MS);
    recorder.record(queue(), "Normal", "Ready", "ready");
    expect(recorder.tracked).to.equal(1);

    for (let i = 0; i < MAX_TRACKED_SERIES + 100; i++)
      recorder.record(queue(), "Normal", "Ready", `message ${String(i)}`);
    expect(recorder.tracked).to.equal(MAX_TRACKED_SERIES);
    await recorder.flush();
  });

  it("crops long messages to the API's limit without splitting a character", async () => {
    recorder.record(queue(), "Warning", "Failed", "é".repeat(1_000));
    await recorder.flush();
    const message = api.only().message ?? "";
    expect(Buffer.byteLength(message)).to.be.at.most(MAX_MESSAGE_BYTES);
    expect(message).to.match(/^é+…$/u);
    expect(cropUtf8("x".repeat(2_000), 1_024)).to.equal(`${"x".repeat(1_021)}…`);
    expect(cropUtf8(`${"x".repeat(1_019)}😀😀`, 1_024)).to.equal(`${"x".repeat(1_019)}…`);
    expect(cropUtf8("short", 1_024)).to.equal("short");
  });

  it("puts a cluster-scoped object's Events in the default namespace without an involvedObject namespace", async () => {
    recorder.record(
      { apiVersion: "v1", kind: "Node", metadata: { name: "node-1", uid: "n1" } },
      "Warning",
      "Pressure",
      "memory",
    );
    await recorder.flush();
    expect(api.only().metadata.namespace).to.equal("default");
    expect(api.only().involvedObject).to.deep.equal({ apiVersion: "v1", kind: "Node", name: "node-1", uid: "n1" });
  });
});
