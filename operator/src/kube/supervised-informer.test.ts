import type { ErrorCallback, Informer, KubernetesObject, ObjectCache, ObjectCallback } from "@kubernetes/client-node";
import { expect } from "chai";
import winston from "winston";
import { FakeClock } from "../../../test/support/fake-clock.js";
import {
  InformerSyncError,
  SupervisedInformer,
  type RestartReason,
  type SupervisedInformerOptions,
} from "./supervised-informer.js";

type ObjectVerb = "add" | "update" | "delete";
/** How a fake informer's start() behaves: list at once, fail the list, or wait until the test calls `release()`. */
type StartMode = "list" | "fail" | "gate";

const keyOf = (o: KubernetesObject): string => `${o.metadata?.namespace ?? ""}/${o.metadata?.name ?? ""}`;

/** Lets already-settled promise chains run; never used to wait for something that has to happen. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

/**
 * The API server's side of list-and-watch, in memory: the objects, and every informer made over them (newest last).
 * Changes reach only informers whose watch is open, as over a real watch.
 */
class FakeWatchSource {
  readonly informers: FakeInformer[] = [];
  /** How the next informers' start() behave, one entry each; "list" once empty. */
  readonly nextStarts: StartMode[] = [];
  private readonly objects = new Map<string, KubernetesObject>();
  private version = 0;

  readonly factory = (): FakeInformer => {
    this.informers.push(new FakeInformer(this, this.nextStarts.shift() ?? "list"));
    return this.latest;
  };

  get latest(): FakeInformer {
    return this.informers.at(-1) ?? expect.fail("no informer was made yet");
  }

  put(name: string, namespace = "default"): void {
    const obj = { metadata: { name, namespace, resourceVersion: String(++this.version) } };
    const verb = this.objects.has(keyOf(obj)) ? "update" : "add";
    this.objects.set(keyOf(obj), obj);
    for (const informer of this.informers) informer.deliver(verb, obj);
  }

  remove(name: string, namespace = "default"): void {
    const obj = this.objects.get(`${namespace}/${name}`) ?? expect.fail(`no ${namespace}/${name}`);
    this.objects.delete(keyOf(obj));
    for (const informer of this.informers) informer.deliver("delete", obj);
  }

  snapshot = (): KubernetesObject[] => [...this.objects.values()];
}

/** An informer over a {@link FakeWatchSource}, shaped like client-node's ListWatch (which `makeInformer` returns). */
class FakeInformer implements Informer<KubernetesObject>, ObjectCache<KubernetesObject> {
  watching = false;
  stopped = false;
  private readonly objects = new Map<string, KubernetesObject>();
  private readonly objectCallbacks: Record<ObjectVerb, ObjectCallback<KubernetesObject>[]> = {
    add: [],
    update: [],
    delete: [],
  };
  private readonly errorCallbacks: ErrorCallback[] = [];
  private gate: (() => void) | undefined;

  constructor(
    private readonly source: FakeWatchSource,
    private readonly mode: StartMode,
  ) {}

  on(verb: ObjectVerb | "change", cb: ObjectCallback<KubernetesObject>): void;
  on(verb: "error" | "connect", cb: ErrorCallback): void;
  on(verb: ObjectVerb | "change" | "error" | "connect", cb: ObjectCallback<KubernetesObject> | ErrorCallback): void {
    if (verb === "error") this.errorCallbacks.push(cb);
    else if (verb === "change" || verb === "connect") throw new Error(`the supervisor does not use ${verb}`);
    else this.objectCallbacks[verb].push(cb);
  }

  off(): void {
    throw new Error("the supervisor never unsubscribes");
  }

  /** Like ListWatch.start(): the list arrives as adds, then the watch opens; a failed list reports an error and resolves. */
  start(): Promise<void> {
    if (this.mode === "gate")
      return new Promise((resolve) => {
        this.gate = () => {
          this.deliverList();
          resolve();
        };
      });
    if (this.mode === "fail") this.fail(new Error("list failed: 403 Forbidden"));
    else this.deliverList();
    return Promise.resolve();
  }

  /** Completes a gated start. */
  release(): void {
    if (!this.gate) throw new Error("this informer's start is not gated");
    this.gate();
  }

  /** Like ListWatch.stop(): the aborted watch request still reaches the error callbacks, a little later. */
  stop(): Promise<void> {
    this.stopped = true;
    this.watching = false;
    queueMicrotask(() => {
      this.fail(new Error("The operation was aborted"));
    });
    return Promise.resolve();
  }

  /** The watch ends with an error ListWatch does not retry itself (anything but 410 and client timeouts). */
  fail(err: Error): void {
    this.watching = false;
    for (const cb of this.errorCallbacks) cb(err);
  }

  deliver(verb: ObjectVerb, obj: KubernetesObject): void {
    if (!this.watching) return;
    if (verb === "delete") this.objects.delete(keyOf(obj));
    else this.objects.set(keyOf(obj), obj);
    for (const cb of this.objectCallbacks[verb]) cb(obj);
  }

  get(name: string, namespace?: string): KubernetesObject | undefined {
    return this.objects.get(`${namespace ?? ""}/${name}`);
  }

  list(namespace?: string): KubernetesObject[] {
    return [...this.objects.values()].filter((o) => namespace === undefined || o.metadata?.namespace === namespace);
  }

  private deliverList(): void {
    this.watching = true;
    for (const obj of this.source.snapshot()) this.deliver("add", obj);
  }
}

describe("SupervisedInformer", () => {
  let clock: FakeClock;
  let source: FakeWatchSource;
  let changes: string[];
  let restartReasons: RestartReason[];
  /** When each informer was made, relative to the test's start. */
  let launches: number[];
  let supervised: SupervisedInformer<KubernetesObject>[];
  const logger = winston.createLogger({ silent: true });

  function supervise(
    options: Partial<SupervisedInformerOptions<KubernetesObject>> = {},
  ): SupervisedInformer<KubernetesObject> {
    const start = clock.nowMs();
    const informer = new SupervisedInformer<KubernetesObject>({
      name: "things",
      clock,
      logger,
      factory: () => {
        launches.push(clock.nowMs() - start);
        return source.factory();
      },
      onChange: (obj) => changes.push(keyOf(obj)),
      onRestart: (reason) => restartReasons.push(reason),
      baseBackoffMs: 1_000,
      maxBackoffMs: 8_000,
      staleAfterMs: 60_000,
      ...options,
    });
    supervised.push(informer);
    return informer;
  }

  async function started(
    options: Partial<SupervisedInformerOptions<KubernetesObject>> = {},
  ): Promise<SupervisedInformer<KubernetesObject>> {
    const informer = supervise(options);
    await informer.start();
    await informer.waitForSync(1_000);
    changes.length = 0;
    return informer;
  }

  const keys = (informer: SupervisedInformer<KubernetesObject>): string[] => informer.list().map(keyOf).sort();
  const rejectionOf = (promise: Promise<unknown>): Promise<unknown> =>
    promise.then(
      () => undefined,
      (err: unknown) => err,
    );

  beforeEach(() => {
    [clock, source, changes, restartReasons, launches, supervised] = [
      new FakeClock(),
      new FakeWatchSource(),
      [],
      [],
      [],
      [],
    ];
  });

  afterEach(async () => {
    await Promise.all(supervised.map((s) => s.stop()));
  });

  it("is not healthy, and serves nothing, until its first list has synced", async () => {
    source.put("a");
    source.nextStarts.push("gate");
    const informer = supervise();
    await informer.start();
    const synced = informer.waitForSync(10_000);
    await settle();
    expect(informer.healthy()).to.equal(false);
    expect(informer.synced).to.equal(false);
    expect(informer.list()).to.deep.equal([]);
    expect(changes).to.deep.equal([]);

    source.latest.release();
    await synced;
    expect(informer.healthy()).to.equal(true);
    expect(keys(informer)).to.deep.equal(["default/a"]);
    expect(informer.get("a", "default")?.metadata?.name).to.equal("a");
    expect(changes).to.deep.equal(["default/a"]);
  });

  it("rejects waitForSync with the informer's name and last error when the first list does not come in time", async () => {
    source.nextStarts.push("fail", "gate");
    const informer = supervise();
    await informer.start();
    const error = rejectionOf(informer.waitForSync(10_000));
    clock.advance(9_999);
    await settle();
    expect(informer.synced).to.equal(false);
    clock.advance(1);
    const err = await error;
    expect(err).to.be.instanceOf(InformerSyncError);
    expect((err as Error).message).to.match(
      /the things informer did not sync within 10000 ms \(last error: list failed: 403 Forbidden\)/,
    );
    expect((err as Error).cause).to.be.instanceOf(Error);
  });

  it("restarts after an error with a doubling, capped backoff, serving the last cache while unhealthy", async () => {
    source.put("a");
    source.put("b");
    const informer = await started();
    launches.length = 0;
    source.nextStarts.push("fail", "fail", "fail", "fail");

    source.latest.fail(new Error("watch ended: 500"));
    await settle();
    expect(informer.healthy()).to.equal(false);
    expect(keys(informer)).to.deep.equal(["default/a", "default/b"]);
    expect(informer.get("b", "default")).to.not.equal(undefined);

    clock.advance(30_000);
    await settle();
    // Four failed lists after the broken watch: 1 s, 2 s, 4 s, then 8 s twice (the cap).
    expect(launches).to.deep.equal([1_000, 3_000, 7_000, 15_000, 23_000]);
    expect(informer.restarts).to.equal(5);
    expect(restartReasons).to.deep.equal(["error", "error", "error", "error", "error"]);
    expect(informer.healthy()).to.equal(true);
  });

  it("starts the backoff over once a restarted informer has stayed healthy", async () => {
    const informer = await started({ staleAfterMs: 3_600_000, resetBackoffAfterMs: 60_000 });
    launches.length = 0;

    source.latest.fail(new Error("watch ended"));
    clock.advance(1_000);
    await settle();
    source.latest.fail(new Error("watch ended again at once"));
    clock.advance(2_000);
    await settle();
    expect(launches).to.deep.equal([1_000, 3_000]);

    clock.advance(60_000);
    source.latest.fail(new Error("watch ended after a healthy minute"));
    clock.advance(1_000);
    await settle();
    expect(launches).to.deep.equal([1_000, 3_000, 64_000]);
    expect(informer.healthy()).to.equal(true);
  });

  it("reports adds, updates and deletes from the watch", async () => {
    source.put("a");
    const informer = await started();
    source.put("b");
    source.put("a");
    source.remove("a");
    expect(changes).to.deep.equal(["default/b", "default/a", "default/a"]);
    expect(keys(informer)).to.deep.equal(["default/b"]);
  });

  it("after a restart reports every object, and those deleted while no watch ran", async () => {
    source.put("a");
    source.put("b");
    source.put("c", "other");
    const informer = await started();
    source.latest.fail(new Error("watch ended"));
    source.remove("b");
    source.put("d");
    await settle();
    expect(changes).to.deep.equal([]);

    clock.advance(1_000);
    await settle();
    expect(changes.sort()).to.deep.equal(["default/a", "default/b", "default/d", "other/c"]);
    expect(keys(informer)).to.deep.equal(["default/a", "default/d", "other/c"]);
    // The replaced informer's late abort error is not taken for a new failure.
    expect(informer.restarts).to.equal(1);
    expect(informer.healthy()).to.equal(true);
  });

  it("relists an informer that has been quiet for half the stale period, staying healthy", async () => {
    source.put("a");
    const informer = await started();
    clock.advance(20_000);
    source.put("b");
    changes.length = 0;

    // Quiet since the event at 20 s: the relist is due at 50 s, not 30 s.
    clock.advance(29_999);
    expect(source.informers).to.have.length(1);
    clock.advance(1);
    expect(source.informers).to.have.length(2);
    expect(informer.healthy()).to.equal(true);
    await settle();
    expect(changes.sort()).to.deep.equal(["default/a", "default/b"]);
    expect(informer.restarts).to.equal(0);
    expect(restartReasons).to.deep.equal([]);
    expect(source.informers[0]?.stopped).to.equal(true);
  });

  it("goes unhealthy and restarts when nothing is heard for the stale period", async () => {
    source.put("a");
    const informer = await started();
    source.nextStarts.push("gate");

    clock.advance(30_000);
    expect(source.informers).to.have.length(2);
    clock.advance(29_999);
    expect(informer.healthy()).to.equal(true);
    clock.advance(1);
    expect(informer.stale).to.equal(true);
    expect(informer.healthy()).to.equal(false);
    expect(source.informers).to.have.length(3);
    expect(informer.restarts).to.equal(1);
    expect(restartReasons).to.deep.equal(["stale"]);
    expect(keys(informer)).to.deep.equal(["default/a"]);

    await settle();
    expect(informer.healthy()).to.equal(true);
    // The hung relist finishing late changes nothing.
    source.informers[1]?.release();
    await settle();
    expect(informer.restarts).to.equal(1);
    expect(source.informers).to.have.length(3);
  });

  it("restarts with backoff when the factory itself throws", async () => {
    let calls = 0;
    const informer = supervise({
      factory: () => {
        if (++calls === 1) throw new Error("no current cluster");
        return source.factory();
      },
    });
    await informer.start();
    const synced = informer.waitForSync(5_000);
    expect(informer.restarts).to.equal(1);
    clock.advance(1_000);
    await synced;
    expect(informer.healthy()).to.equal(true);
  });

  it("stops its informer and every timer, and ignores what the old watch still delivers", async () => {
    source.put("a");
    const informer = await started();
    await informer.stop();
    expect(clock.pending).to.equal(0);
    expect(source.latest.stopped).to.equal(true);
    expect(informer.healthy()).to.equal(false);
    source.latest.watching = true;
    source.put("b");
    await settle();
    expect(changes).to.deep.equal([]);
    expect(informer.restarts).to.equal(0);
  });

  it("stops during a backoff, cancelling the restart", async () => {
    const informer = await started();
    source.latest.fail(new Error("watch ended"));
    await informer.stop();
    expect(clock.pending).to.equal(0);
    clock.advance(3_600_000);
    expect(source.informers).to.have.length(1);
  });

  it("rejects a pending waitForSync on stop and leaves no timer behind", async () => {
    source.nextStarts.push("gate");
    const informer = supervise();
    await informer.start();
    const error = rejectionOf(informer.waitForSync(60_000));
    await informer.stop();
    expect(((await error) as Error).message).to.match(/the things informer was stopped before it synced/);
    expect(clock.pending).to.equal(0);
  });
});
