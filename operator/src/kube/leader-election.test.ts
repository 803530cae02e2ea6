import {
  ApiException,
  CoordinationV1Api,
  HttpMethod,
  KubeConfig,
  RequestContext,
  type ConfigurationOptions,
  type V1Lease,
} from "@kubernetes/client-node";
import { expect } from "chai";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import winston from "winston";
import { realClock } from "./clock.js";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { LeaderElector, type LeaseClient } from "./leader-election.js";

const NAME = "buildkite-operator";
const NAMESPACE = "buildkite";
const logger = winston.createLogger({ silent: true });

/** Lets every promise chain that can move on do so (a macrotask turn runs after all microtasks). */
async function settle(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
}

/** Advances the clock in small steps, letting the elector's promise chains run between them. */
async function tick(clock: FakeClock, ms: number, stepMs = 50): Promise<void> {
  clock.advance(0);
  await settle();
  for (let done = 0; done < ms; done += stepMs) {
    clock.advance(Math.min(stepMs, ms - done));
    await settle();
  }
  clock.advance(0);
  await settle();
}

/** A request the store holds unanswered (a hung API server), with the abort signal the client was handed. */
interface Held {
  signal: AbortSignal | undefined;
  release(): void;
}

/**
 * The Lease endpoint in memory, shared by the replicas of a test: read (404 when absent), create (409 when it exists)
 * and replace (409 on a stale resourceVersion), as the API server answers. It can hang every request, and a replica's
 * requests can fail as if its network were down. Requests run the per-call middleware on a real RequestContext, as
 * client-node does, so the abort signal the elector sets is seen.
 */
class LeaseStore {
  lease: V1Lease | undefined;
  /** While true, requests are held until the test releases them; they ignore their abort signal. */
  hang = false;
  readonly held: Held[] = [];
  readonly requests: string[] = [];
  private version = 0;

  client(identity: string, down: () => boolean = () => false): LeaseClient {
    const client = {
      readNamespacedLease: (_req: unknown, options?: ConfigurationOptions) =>
        this.handle(`${identity} read`, options, down, () => {
          if (!this.lease) throw new ApiException(404, "NotFound", { reason: "NotFound" }, {});
          return structuredClone(this.lease);
        }),
      createNamespacedLease: (req: { body: V1Lease }, options?: ConfigurationOptions) =>
        this.handle(`${identity} create`, options, down, () => {
          if (this.lease) throw new ApiException(409, "AlreadyExists", { reason: "AlreadyExists" }, {});
          return this.store(req.body);
        }),
      replaceNamespacedLease: (req: { body: V1Lease }, options?: ConfigurationOptions) =>
        this.handle(`${identity} replace`, options, down, () => {
          if (req.body.metadata?.resourceVersion !== this.lease?.metadata?.resourceVersion)
            throw new ApiException(409, "Conflict", { reason: "Conflict" }, {});
          return this.store(req.body);
        }),
    };
    return client;
  }

  get holder(): string | undefined {
    return this.lease?.spec?.holderIdentity;
  }

  private store(body: V1Lease): V1Lease {
    this.version++;
    const stored = structuredClone(body);
    stored.metadata ??= {};
    stored.metadata.resourceVersion = String(this.version);
    this.lease = stored;
    return structuredClone(stored);
  }

  private async handle<T>(
    what: string,
    options: ConfigurationOptions | undefined,
    down: () => boolean,
    answer: () => T,
  ): Promise<T> {
    const context = new RequestContext("https://127.0.0.1:6443/apis/coordination.k8s.io/v1", HttpMethod.GET);
    for (const m of options?.middleware ?? []) await m.pre(context).toPromise();
    this.requests.push(what);
    if (down()) throw new TypeError("fetch failed");
    if (this.hang) await new Promise<void>((release) => this.held.push({ signal: context.getSignal(), release }));
    return answer();
  }
}

/** A replica: its elector and what its callbacks saw, on the shared clock. */
function replica(
  store: LeaseStore,
  clock: FakeClock,
  identity: string,
  down?: () => boolean,
): { elector: LeaderElector; started: number[]; stopped: number[] } {
  const elector = new LeaderElector({
    client: store.client(identity, down),
    namespace: NAMESPACE,
    name: NAME,
    identity,
    clock,
    logger,
  });
  const started: number[] = [];
  const stopped: number[] = [];
  elector.start({
    onStartedLeading: () => started.push(clock.nowMs()),
    onStoppedLeading: () => stopped.push(clock.nowMs()),
  });
  return { elector, started, stopped };
}

describe("LeaderElector", () => {
  let clock: FakeClock;
  let store: LeaseStore;

  beforeEach(() => {
    clock = new FakeClock(0);
    store = new LeaseStore();
  });

  it("acquires a free lease and may act at once; a standby may not", async () => {
    const a = replica(store, clock, "a");
    await tick(clock, 0);
    expect(store.holder).to.equal("a");
    expect(store.lease?.spec).to.include({ leaseDurationSeconds: 15, leaseTransitions: 0 });
    expect(a.started).to.deep.equal([0]);
    expect(a.elector.leading).to.equal(true);
    expect(a.elector.mayAct()).to.equal(true);

    const b = replica(store, clock, "b");
    await tick(clock, 1000);
    expect(b.elector.leading).to.equal(false);
    expect(b.elector.mayAct()).to.equal(false);
  });

  it("renews every retry period and keeps acting as long as it does", async () => {
    const a = replica(store, clock, "a");
    await tick(clock, 0);
    const first = String(store.lease?.spec?.renewTime);
    await tick(clock, 2000);
    expect(String(store.lease?.spec?.renewTime)).to.not.equal(first);
    expect(String(store.lease?.spec?.renewTime)).to.match(/^1970-01-01T00:00:02\.000000Z$/);
    await tick(clock, 60_000, 500);
    expect(a.elector.mayAct()).to.equal(true);
    expect(a.stopped).to.deep.equal([]);
    expect(store.requests.filter((r) => r === "a replace")).to.have.length(31);
  });

  it("takes over only after a whole lease duration without change, while the old leader stops by its renew deadline", async () => {
    let aDown = false;
    const a = replica(store, clock, "a", () => aDown);
    await tick(clock, 5000);
    // A's last renewal was at 4 s; from now on its requests fail.
    aDown = true;
    const b = replica(store, clock, "b");
    await tick(clock, 0);
    await tick(clock, 8_950);
    expect(a.elector.mayAct(), "the old leader just before its renew deadline (4 s + 10 s)").to.equal(true);
    await tick(clock, 50);
    expect(a.elector.mayAct(), "the old leader at its renew deadline").to.equal(false);
    expect(a.stopped).to.deep.equal([14_000]);
    // B first saw A's last renewal at 5 s: the lease is A's until 20 s on B's clock.
    await tick(clock, 5_900);
    expect(store.holder, "at 19.9 s").to.equal("a");
    expect(b.elector.leading).to.equal(false);
    await tick(clock, 100);
    expect(store.holder, "at 20 s").to.equal("b");
    expect(b.started).to.deep.equal([20_000]);
    expect(store.lease?.spec?.leaseTransitions).to.equal(1);
    expect(b.elector.mayAct()).to.equal(true);
  });

  it("aborts a hung renewal at its timeout and steps down by the renew deadline; a late answer changes nothing", async () => {
    const a = replica(store, clock, "a");
    await tick(clock, 2000);
    // Renewed at 2 s; the API server stops answering.
    store.hang = true;
    await tick(clock, 9_950);
    expect(a.elector.mayAct(), "at 11.95 s").to.equal(true);
    expect(a.stopped).to.deep.equal([]);
    await tick(clock, 50);
    expect(a.elector.mayAct(), "at 12 s, the renew deadline").to.equal(false);
    expect(a.stopped).to.deep.equal([12_000]);
    expect(store.held.length, "requests held").to.be.at.least(2);
    expect(
      store.held.every((h) => h.signal?.aborted === true),
      "every hung request aborted",
    ).to.equal(true);

    store.hang = false;
    for (const h of store.held) h.release();
    await tick(clock, 10_000);
    expect(a.elector.leading).to.equal(false);
    expect(a.elector.mayAct()).to.equal(false);
    expect(a.started).to.have.length(1);
  });

  it("after a pause longer than the lease, may not act from the first call, and steps down without a request", async () => {
    const a = replica(store, clock, "a");
    await tick(clock, 3000);
    expect(a.elector.mayAct()).to.equal(true);
    const sent = store.requests.length;
    clock.skip(20_000);
    expect(a.elector.mayAct(), "on waking, before any timer ran").to.equal(false);
    await tick(clock, 0);
    expect(a.stopped).to.deep.equal([23_000]);
    expect(store.requests.length, "requests after waking").to.equal(sent);
    await tick(clock, 10_000);
    expect(store.requests.length, "it campaigns no more").to.equal(sent);
  });

  it("releases the lease on stop(), so a standby takes it at its next try", async () => {
    const a = replica(store, clock, "a");
    await tick(clock, 0);
    const b = replica(store, clock, "b");
    await tick(clock, 2000);
    await a.elector.stop();
    expect(store.holder).to.equal("");
    expect(a.elector.mayAct()).to.equal(false);
    await tick(clock, 2000);
    expect(store.holder).to.equal("b");
    expect(b.started).to.deep.equal([4000]);
    expect(store.lease?.spec?.leaseTransitions, "a released lease is no transition").to.equal(0);
  });

  it("really aborts a Lease request of client-node that gets no answer", async () => {
    const requests: IncomingMessage[] = [];
    const closed: Promise<void>[] = [];
    const server = createServer((req) => {
      requests.push(req);
      closed.push(
        new Promise((resolve) =>
          req.socket.once("close", () => {
            resolve();
          }),
        ),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [
        { name: "c", server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true },
      ],
      users: [{ name: "u" }],
      contexts: [{ name: "x", cluster: "c", user: "u" }],
      currentContext: "x",
    });
    const elector = new LeaderElector({
      client: kc.makeApiClient(CoordinationV1Api),
      namespace: NAMESPACE,
      name: NAME,
      identity: "a",
      clock: realClock,
      logger,
      requestTimeoutMs: 100,
    });
    try {
      elector.start({ onStartedLeading: () => undefined, onStoppedLeading: () => undefined });
      await new Promise<void>((resolve) => {
        server.once("request", () => {
          resolve();
        });
      });
      await closed[0];
      expect(requests[0]?.url).to.equal(`/apis/coordination.k8s.io/v1/namespaces/${NAMESPACE}/leases/${NAME}`);
    } finally {
      await elector.stop();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
