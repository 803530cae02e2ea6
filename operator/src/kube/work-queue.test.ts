import { expect } from "chai";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { WorkQueue, type Reconcile, type ReconcileResult, type WorkQueueOptions } from "./work-queue.js";

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Lets already-settled promise chains run; never used to wait for something that has to happen. */
async function flushMicrotasks(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

type Body = (key: string, call: number) => Promise<ReconcileResult>;

/**
 * A reconcile that records its calls and concurrency. With `gated`, each call waits until the test settles it with
 * `release` or `fail`, so a test decides exactly when handlers finish.
 */
class Handler {
  readonly calls: string[] = [];
  maxPerKey = 0;
  maxTotal = 0;
  private readonly running: string[] = [];
  private readonly gates: { key: string; gate: Deferred<ReconcileResult> }[] = [];
  private readonly startWaiters: { count: number; resolve: () => void }[] = [];

  constructor(private readonly body: Body | "gated" = () => Promise.resolve(undefined)) {}

  readonly reconcile: Reconcile = async (key) => {
    this.calls.push(key);
    this.running.push(key);
    this.maxPerKey = Math.max(this.maxPerKey, this.running.filter((k) => k === key).length);
    this.maxTotal = Math.max(this.maxTotal, this.running.length);
    // Resolving twice is harmless, so waiters already released need not be removed.
    for (const w of this.startWaiters) if (this.calls.length >= w.count) w.resolve();
    try {
      if (this.body !== "gated") return await this.body(key, this.calls.length);
      const gate = deferred<ReconcileResult>();
      this.gates.push({ key, gate });
      return await gate.promise;
    } finally {
      this.running.splice(this.running.indexOf(key), 1);
    }
  };

  /** Resolves once `count` calls have started. */
  started(count: number): Promise<void> {
    return this.calls.length >= count
      ? Promise.resolve()
      : new Promise((resolve) => this.startWaiters.push({ count, resolve }));
  }

  release(key: string, result?: ReconcileResult): void {
    this.take(key).resolve(result);
  }

  fail(key: string, error: unknown): void {
    this.take(key).reject(error);
  }

  private take(key: string): Deferred<ReconcileResult> {
    const [found] = this.gates.splice(
      this.gates.findIndex((g) => g.key === key),
      1,
    );
    if (found?.key !== key) throw new Error(`no call of ${key} is waiting`);
    return found.gate;
  }
}

const failing: Body = () => Promise.reject(new Error("boom"));

describe("WorkQueue", () => {
  let clock: FakeClock;
  let queues: WorkQueue[];
  /** Moves the fake clock on, then waits for whatever fell due to be handled. */
  const advance = async (queue: WorkQueue, ms: number): Promise<void> => {
    clock.advance(ms);
    await queue.idle();
  };
  const make = (options: Partial<WorkQueueOptions> = {}): WorkQueue => {
    const queue = new WorkQueue({ name: "test", clock, ...options });
    queues.push(queue);
    return queue;
  };

  beforeEach(() => {
    clock = new FakeClock();
    queues = [];
  });
  afterEach(() => Promise.all(queues.map((q) => q.shutdown())));

  it("queues a waiting key once however often it is added, and hands out keys in FIFO order", async () => {
    const queue = make();
    const handler = new Handler();
    for (const key of ["a", "b", "a", "c", "b", "a"]) queue.add(key);
    expect(queue.length).to.equal(3);
    queue.start(1, handler.reconcile);
    await queue.idle();
    expect(handler.calls).to.deep.equal(["a", "b", "c"]);
    expect(queue.length).to.equal(0);
  });

  it("re-queues a key added while it is processed exactly once afterwards, never running it twice at once", async () => {
    const queue = make();
    const handler = new Handler("gated");
    queue.start(4, handler.reconcile);
    queue.add("a");
    await handler.started(1);
    for (let i = 0; i < 3; i++) queue.add("a");
    await flushMicrotasks();
    // Idle workers are free, yet none may take the key while its first handler runs.
    expect(queue.inFlight).to.equal(1);
    expect(queue.length).to.equal(0);
    expect(handler.calls).to.deep.equal(["a"]);
    handler.release("a");
    await handler.started(2);
    expect(queue.inFlight).to.equal(1);
    handler.release("a");
    await queue.idle();
    expect(handler.calls).to.deep.equal(["a", "a"]);
    expect(handler.maxPerKey).to.equal(1);
  });

  it("runs different keys in parallel, up to the worker count", async () => {
    const queue = make();
    const handler = new Handler("gated");
    queue.start(2, handler.reconcile);
    for (const key of ["a", "b", "c"]) queue.add(key);
    await handler.started(2);
    await flushMicrotasks();
    expect(handler.calls).to.deep.equal(["a", "b"]);
    expect(queue.inFlight).to.equal(2);
    expect(queue.length).to.equal(1);
    handler.release("b");
    await handler.started(3);
    expect(handler.calls).to.deep.equal(["a", "b", "c"]);
    handler.release("a");
    handler.release("c");
    await queue.idle();
    expect(handler.maxTotal).to.equal(2);
  });

  it("backs a failing key off exponentially, capped at maxDelayMs", async () => {
    const queue = make({ baseDelayMs: 10, maxDelayMs: 40 });
    const handler = new Handler(failing);
    queue.start(2, handler.reconcile);
    queue.add("a");
    await queue.idle();
    expect(handler.calls).to.have.length(1);
    let runs = 1;
    for (const delay of [10, 20, 40, 40, 40]) {
      await advance(queue, delay - 1);
      expect(handler.calls, `not before ${delay} ms`).to.have.length(runs);
      await advance(queue, 1);
      expect(handler.calls, `at ${delay} ms`).to.have.length(++runs);
    }
  });

  it("uses the default backoff of 5 ms doubling per failure", async () => {
    const queue = make();
    const handler = new Handler(failing);
    queue.start(1, handler.reconcile);
    queue.add("a");
    await queue.idle();
    const runsAt = [];
    for (let ms = 0; ms < 15; ms++) {
      await advance(queue, 1);
      runsAt.push(handler.calls.length);
    }
    // Runs again at 5 ms, then 10 ms after that.
    expect(runsAt).to.deep.equal([1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3]);
  });

  it("forgets a key's failures once it succeeds, so its next failure starts from the base delay", async () => {
    const queue = make({ baseDelayMs: 10 });
    // Fails twice, succeeds, then fails again.
    const handler = new Handler((_key, call) => (call === 3 ? Promise.resolve(undefined) : failing("a", call)));
    queue.start(1, handler.reconcile);
    queue.add("a");
    await queue.idle();
    await advance(queue, 10);
    await advance(queue, 20);
    expect(handler.calls).to.have.length(3);
    expect(clock.pending).to.equal(0);
    queue.add("a");
    await queue.idle();
    expect(handler.calls).to.have.length(4);
    await advance(queue, 9);
    expect(handler.calls).to.have.length(4);
    await advance(queue, 1);
    expect(handler.calls).to.have.length(5);
  });

  it("can forget a key's failures explicitly", () => {
    // No workers: the fake clock's pending timers show each backoff directly.
    const queue = make({ baseDelayMs: 10 });
    queue.addRateLimited("a");
    clock.advance(10);
    expect(clock.pending).to.equal(0);
    queue.addRateLimited("a");
    clock.advance(19);
    expect(clock.pending, "second failure waits 20 ms").to.equal(1);
    clock.advance(1);
    expect(clock.pending).to.equal(0);
    queue.forget("a");
    queue.addRateLimited("a");
    clock.advance(9);
    expect(clock.pending).to.equal(1);
    clock.advance(1);
    expect(clock.pending, "back to the base delay").to.equal(0);
    expect(queue.length).to.equal(1);
  });

  it("runs a key again after the requeueAfterMs its handler returned", async () => {
    const queue = make();
    const handler = new Handler((_key, call) => Promise.resolve(call === 1 ? { requeueAfterMs: 1_000 } : undefined));
    queue.start(1, handler.reconcile);
    queue.add("a");
    await queue.idle();
    expect(clock.pending).to.equal(1);
    await advance(queue, 999);
    expect(handler.calls).to.have.length(1);
    await advance(queue, 1);
    expect(handler.calls).to.have.length(2);
    expect(clock.pending).to.equal(0);
  });

  it("keeps only the soonest of several delayed adds of a key, and adds at once without a delay", async () => {
    const queue = make();
    const handler = new Handler();
    queue.start(1, handler.reconcile);
    queue.addAfter("a", 100);
    queue.addAfter("a", 50);
    queue.addAfter("a", 200);
    expect(clock.pending).to.equal(1);
    await advance(queue, 49);
    expect(handler.calls).to.deep.equal([]);
    await advance(queue, 1);
    expect(handler.calls).to.deep.equal(["a"]);
    await advance(queue, 1_000);
    expect(handler.calls).to.deep.equal(["a"]);
    queue.addAfter("b", 0);
    expect(clock.pending).to.equal(0);
    await queue.idle();
    expect(handler.calls).to.deep.equal(["a", "b"]);
  });

  it("on shutdown waits for in-flight handlers, and drops waiting and delayed keys", async () => {
    const queue = make();
    const handler = new Handler("gated");
    queue.start(1, handler.reconcile);
    queue.add("a");
    queue.add("b");
    queue.addAfter("c", 100);
    await handler.started(1);
    let stopped = false;
    const stopping = queue.shutdown().then(() => {
      stopped = true;
    });
    await flushMicrotasks();
    expect(stopped, "resolved while a handler was still running").to.equal(false);
    expect(clock.pending).to.equal(0);
    expect(queue.length).to.equal(0);
    // Neither a requeue asked for by the finishing handler nor a new add is accepted any more.
    handler.release("a", { requeueAfterMs: 10 });
    queue.add("d");
    await stopping;
    expect(stopped).to.equal(true);
    expect(queue.inFlight).to.equal(0);
    expect(clock.pending).to.equal(0);
    await advance(queue, 1_000);
    expect(handler.calls).to.deep.equal(["a"]);
  });

  it("reports every handled key to onDone, with the error when the handler threw", async () => {
    const done: { key: string; durationMs: number; error?: unknown; retries: number }[] = [];
    const queue = make({ baseDelayMs: 10, onDone: (info) => done.push(info) });
    const handler = new Handler((key, call) =>
      call === 1 ? Promise.reject(new Error(`${key} failed`)) : Promise.resolve(undefined),
    );
    queue.start(1, handler.reconcile);
    queue.add("a");
    await queue.idle();
    expect(done).to.have.length(1);
    expect(done[0]).to.include({ key: "a", retries: 0 });
    expect(done[0]?.error).to.be.instanceOf(Error).with.property("message", "a failed");
    await advance(queue, 10);
    expect(done).to.have.length(2);
    expect(done[1]).to.not.have.property("error");
    expect(done[1]?.retries).to.equal(1);
  });

  it("reports how long a handler took on the queue's clock", async () => {
    const done: number[] = [];
    const queue = make({ onDone: (info) => done.push(info.durationMs) });
    const handler = new Handler("gated");
    queue.start(1, handler.reconcile);
    queue.add("a");
    await handler.started(1);
    clock.advance(250);
    handler.release("a");
    await queue.idle();
    expect(done).to.deep.equal([250]);
  });

  it("turns a thrown undefined into an error, and keeps working after handler and onDone failures", async () => {
    const errors: unknown[] = [];
    const queue = make({
      onDone: ({ error }) => {
        errors.push(error);
        throw new Error("onDone is broken");
      },
    });
    const handler = new Handler("gated");
    queue.start(1, handler.reconcile);
    queue.add("a");
    await handler.started(1);
    handler.fail("a", undefined);
    await queue.idle();
    queue.add("b");
    await handler.started(2);
    handler.release("b");
    await queue.idle();
    expect(handler.calls).to.deep.equal(["a", "b"]);
    expect(errors).to.have.length(2);
    expect(errors[0]).to.be.instanceOf(Error);
    expect(errors[1]).to.equal(undefined);
  });

  it("resolves idle at once when empty, refuses a second start, and shuts down at once when nothing runs", async () => {
    const queue = make();
    await queue.idle();
    expect(queue.length).to.equal(0);
    expect(queue.inFlight).to.equal(0);
    queue.start(3, new Handler().reconcile);
    expect(() => {
      queue.start(1, new Handler().reconcile);
    }).to.throw(/already started/);
    queue.addAfter("a", 10);
    await queue.shutdown();
    expect(clock.pending).to.equal(0);
  });
});
