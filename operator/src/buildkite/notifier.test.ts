import { expect } from "chai";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { BuildkiteApiError } from "./errors.js";
import { NotificationBatcher, type NotifyClient } from "./notifier.js";
import { capturedLogger } from "../../../test/support/buildkite-test-helpers.js";

type Item = Parameters<NotifyClient["notify"]>[1][number];

/** Lets already-settled promise chains run; never used to wait for something that has to happen. */
async function flushMicrotasks(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

/** A notify stub that records calls and answers with `answer`. */
class StubClient implements NotifyClient {
  readonly calls: { key: string; items: Item[] }[] = [];
  inFlight = 0;
  maxInFlight = 0;
  answer: (items: Item[]) => Promise<{ errors: { error: string; indexes: number[] }[] }> = () =>
    Promise.resolve({ errors: [] });

  async notify(key: string, items: Item[]): Promise<{ errors: { error: string; indexes: number[] }[] }> {
    this.calls.push({ key, items });
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      return await this.answer(items);
    } finally {
      this.inFlight--;
    }
  }
}

describe("NotificationBatcher", () => {
  let clock: FakeClock;
  let client: StubClient;
  let captured: ReturnType<typeof capturedLogger>;
  let batcher: NotificationBatcher;

  beforeEach(() => {
    clock = new FakeClock();
    client = new StubClient();
    captured = capturedLogger();
    batcher = new NotificationBatcher({ client, stackKey: "stack-1", clock, logger: captured.logger });
  });

  it("sends what arrived within one interval as one call, stamped when added", async () => {
    batcher.add("j1", "Created pod");
    clock.advance(40);
    batcher.add("j2", "Pulled image", new Date(0));
    clock.advance(59);
    await flushMicrotasks();
    expect(client.calls).to.have.length(0);
    clock.advance(1);
    await flushMicrotasks();
    expect(client.calls).to.have.length(1);
    expect(client.calls[0]?.key).to.equal("stack-1");
    expect(client.calls[0]?.items).to.deep.equal([
      { jobUuid: "j1", detail: "Created pod", timestamp: new Date(Date.UTC(2026, 0, 1)) },
      { jobUuid: "j2", detail: "Pulled image", timestamp: new Date(0) },
    ]);
    expect(clock.pending).to.equal(0);
  });

  it("sends at most 1000 per call", async () => {
    for (let i = 0; i < 2500; i++) batcher.add(`j${i}`, "x");
    await batcher.flush();
    expect(client.calls.map((c) => c.items.length)).to.deep.equal([1000, 1000, 500]);
  });

  it("never overlaps calls and keeps their order", async () => {
    let release!: () => void;
    client.answer = () =>
      new Promise((resolve) => {
        release = () => {
          resolve({ errors: [] });
        };
      });
    batcher.add("j1", "first");
    const first = batcher.flush();
    batcher.add("j2", "second");
    const second = batcher.flush();
    await flushMicrotasks();
    expect(client.calls).to.have.length(1);
    release();
    await first;
    await flushMicrotasks();
    release();
    await second;
    expect(client.calls.map((c) => c.items[0]?.detail)).to.deep.equal(["first", "second"]);
    expect(client.maxInFlight).to.equal(1);
  });

  it("logs refused items and failed calls instead of throwing", async () => {
    client.answer = () =>
      Promise.resolve({ errors: [{ error: "job finished more than 300 seconds ago", indexes: [1] }] });
    batcher.add("j1", "a");
    batcher.add("j2", "b");
    await batcher.flush();
    client.answer = () => Promise.reject(new BuildkiteApiError({ endpoint: "stack-notification", status: 503 }));
    batcher.add("j3", "c");
    await batcher.flush();
    const log = captured.lines.join("\n");
    expect(log).to.include("job finished more than 300 seconds ago").and.to.include("j2").and.not.include('"j1"');
    expect(log).to.include("Dropped notifications").and.to.include("HTTP 503");
  });

  it("recovers from a failure triggered by the timer without an unhandled rejection", async () => {
    client.answer = () => Promise.reject(new Error("boom"));
    batcher.add("j1", "a");
    clock.advance(100);
    await flushMicrotasks();
    client.answer = () => Promise.resolve({ errors: [] });
    batcher.add("j2", "b");
    clock.advance(100);
    await flushMicrotasks();
    expect(client.calls.map((c) => c.items[0]?.jobUuid)).to.deep.equal(["j1", "j2"]);
  });

  it("stop sends what is queued, cancels the timer and ignores later notifications", async () => {
    batcher.add("j1", "a");
    await batcher.stop();
    expect(client.calls).to.have.length(1);
    expect(clock.pending).to.equal(0);
    batcher.add("j2", "b");
    clock.advance(1000);
    await batcher.flush();
    expect(client.calls).to.have.length(1);
  });

  it("flush with nothing queued makes no call", async () => {
    await batcher.flush();
    expect(client.calls).to.have.length(0);
  });
});
