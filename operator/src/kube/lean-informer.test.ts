import type { KubeConfig, KubernetesObject } from "@kubernetes/client-node";
import { expect } from "chai";
import { eventually } from "../../../test/support/eventually.js";
import { KubeRaw } from "../../../test/support/kube-raw.js";
import { StandInApi } from "../../../test/support/stand-in-api.js";
import { statusCodeOf } from "./field-manager.js";
import { LeanTransport } from "./lean-client.js";
import { LeanInformer, type ListWatchSource, type RawObject } from "./lean-informer.js";

const PODS = "/api/v1/namespaces/ci/pods";
const pod = (name: string, rv: string, phase = "Pending"): object => ({
  metadata: { name, namespace: "ci", resourceVersion: rv, managedFields: [{ manager: "x" }] },
  spec: { nodeName: "n1" },
  status: { phase },
});
const line = (event: object): string => `${JSON.stringify(event)}\n`;
const names = (informer: LeanInformer<KubernetesObject>): (string | undefined)[] =>
  informer.list().map((o) => o.metadata?.name);

/** The operator's transport, and the test harness's: the informer is the same over either. */
const SOURCES: [string, (kc: KubeConfig) => ListWatchSource & { close?(): void }][] = [
  ["LeanTransport", (kc) => new LeanTransport(kc)],
  ["KubeRaw", (kc) => new KubeRaw(kc)],
];

for (const [transport, makeSource] of SOURCES)
  describe(`LeanInformer over ${transport} (against a stand-in API server)`, () => {
    let api: StandInApi;
    let source: ListWatchSource & { close?(): void };
    const gets = (): string[] => api.seen.filter((r) => r.startsWith("GET"));

    before(async () => {
      api = await StandInApi.start();
    });
    after(() => api.close());
    beforeEach(() => {
      source = makeSource(api.kubeConfig());
    });
    afterEach(() => {
      api.reset();
      source.close?.();
    });

    it("lists, then applies watch events split across chunks; a 410 in the stream relists and reports what vanished", async () => {
      api.lists = [[pod("a", "1"), pod("b", "2")], [pod("a", "7", "Running")]];
      const added = JSON.stringify({ type: "ADDED", object: pod("c", "5") });
      const modified = JSON.stringify({ type: "MODIFIED", object: pod("a", "6", "Running") });
      api.watches = [
        { chunks: [added.slice(0, 10), `${added.slice(10)}\n${modified}`, "\n"], end: true },
        { chunks: [line({ type: "ERROR", object: { kind: "Status", code: 410 } })], end: true },
      ];
      const slim = (o: RawObject): KubernetesObject & { phase: string } => ({
        metadata: { name: o.metadata?.name ?? "", namespace: o.metadata?.namespace ?? "" },
        phase: (o.status as { phase?: string } | undefined)?.phase ?? "",
      });
      const informer = new LeanInformer(source, PODS, { transform: slim });
      const events: string[] = [];
      informer.on("add", (o) => events.push(`add ${o.metadata?.name ?? ""}`));
      informer.on("update", (o) => events.push(`update ${o.metadata?.name ?? ""} ${o.phase}`));
      informer.on("delete", (o) => events.push(`delete ${o.metadata?.name ?? ""}`));
      await informer.start();
      await eventually(() => {
        expect(gets()).to.have.length(5);
      });
      await informer.stop();
      expect(events).to.deep.equal([
        "add a",
        "add b",
        "add c",
        "update a Running",
        "update a Running",
        "delete b",
        "delete c",
      ]);
      expect(informer.list().map((o) => o.metadata?.name)).to.deep.equal(["a"]);
      expect(informer.get("a", "ci")).to.deep.equal({ metadata: { name: "a", namespace: "ci" }, phase: "Running" });
      // Watches go on from the last resourceVersion seen: the list's, then the last event's.
      expect(api.seen[1]).to.equal(
        `GET ${PODS}?watch=true&allowWatchBookmarks=true&timeoutSeconds=240&resourceVersion=100`,
      );
      expect(api.seen[2]).to.match(/resourceVersion=6$/);
      expect([...api.tokens]).to.deep.equal(["Bearer t0ken"]);
    });

    it("lists and watches with its label selector; a 410 answer to the watch relists", async () => {
      api.lists = [[pod("a", "1"), pod("b", "2")], [pod("b", "3")]];
      api.watches = [{ chunks: ['{"kind":"Status","code":410,"reason":"Expired"}'], end: true, status: 410 }];
      const informer = new LeanInformer(source, PODS, { labelSelector: "app=x,component=job" });
      const deleted: string[] = [];
      informer.on("delete", (o) => deleted.push(o.metadata?.name ?? ""));
      await informer.start();
      await eventually(() => {
        expect(gets()).to.have.length(4);
      });
      await informer.stop();
      const selector = "labelSelector=app%3Dx%2Ccomponent%3Djob";
      expect(api.seen).to.deep.equal([
        `GET ${PODS}?${selector}`,
        `GET ${PODS}?${selector}&watch=true&allowWatchBookmarks=true&timeoutSeconds=240&resourceVersion=100`,
        `GET ${PODS}?${selector}`,
        `GET ${PODS}?${selector}&watch=true&allowWatchBookmarks=true&timeoutSeconds=240&resourceVersion=300`,
      ]);
      expect(deleted).to.deep.equal(["a"]);
      expect(names(informer)).to.deep.equal(["b"]);
    });

    it("reports a refused watch to its error callbacks and stops; start() goes on from the last resourceVersion", async () => {
      api.lists = [[pod("a", "1")]];
      api.watches = [{ chunks: ['{"kind":"Status","code":403}'], end: true, status: 403 }];
      const informer = new LeanInformer(source, PODS);
      const errors: unknown[] = [];
      informer.on("error", (err) => errors.push(err));
      await informer.start();
      await eventually(() => {
        expect(errors).to.have.length(1);
      });
      expect(statusCodeOf(errors[0])).to.equal(403);
      await informer.start();
      await eventually(() => {
        expect(api.seen).to.have.length(3);
      });
      await informer.stop();
      expect(api.seen[2]).to.match(/watch=true.*resourceVersion=100$/);
    });

    it("reports an error event other than 410 with its code, and a first list that fails rejects start()", async () => {
      api.watches = [
        { chunks: [line({ type: "ERROR", object: { kind: "Status", code: 500, message: "etcd" } })], end: false },
      ];
      const informer = new LeanInformer(source, PODS);
      const errors: unknown[] = [];
      informer.on("error", (err) => errors.push(err));
      await informer.start();
      await eventually(() => {
        expect(errors).to.have.length(1);
      });
      await informer.stop();
      expect(statusCodeOf(errors[0])).to.equal(500);
      const failed = await new LeanInformer(source, "/api/v1/namespaces/gone/pods").start().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(statusCodeOf(failed)).to.equal(404);
    });
  });

describe("LeanTransport's watches", () => {
  let api: StandInApi;
  before(async () => {
    api = await StandInApi.start();
  });
  after(() => api.close());

  it("pass through the KubeConfig's authentication, and never hold the connections requests wait for", async () => {
    const kc = api.kubeConfig();
    const methods: string[] = [];
    const authenticate = kc.applySecurityAuthentication.bind(kc);
    kc.applySecurityAuthentication = async (ctx) => {
      methods.push(ctx.getHttpMethod());
      await authenticate(ctx);
    };
    const transport = new LeanTransport(kc);
    // More watches than requests have connections (32): each stays open, silent.
    const informers = Array.from({ length: 40 }, () => new LeanInformer(transport, PODS));
    await Promise.all(informers.map((i) => i.start()));
    await eventually(() => {
      expect(api.seen.filter((r) => r.includes("watch=true"))).to.have.length(40);
    });
    await transport.send(
      "PATCH",
      `${PODS}/p/status`,
      { body: { status: {} } },
      undefined,
      "application/merge-patch+json",
    );
    await Promise.all(informers.map((i) => i.stop()));
    transport.close();
    expect(methods.filter((m) => m === "GET")).to.have.length(80);
    expect(methods.filter((m) => m === "PATCH")).to.have.length(1);
  });
});
