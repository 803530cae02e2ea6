import { KubeConfig, type KubernetesObject } from "@kubernetes/client-node";
import { expect } from "chai";
import { createServer, type ServerResponse, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { eventually } from "./eventually.js";
import { KubeRaw, KubeRequestError, STRATEGIC_MERGE_PATCH } from "./kube-raw.js";
import { LeanInformer, type RawObject } from "./lean-informer.js";

const PODS = "/api/v1/namespaces/ci/pods";
const pod = (name: string, rv: string, phase = "Pending"): object => ({
  metadata: { name, namespace: "ci", resourceVersion: rv, managedFields: [{ manager: "x" }] },
  spec: { nodeName: "n1" },
  status: { phase },
});

describe("LeanInformer and KubeRaw (against a stand-in API server)", () => {
  let server: Server;
  let seen: string[];
  let tokens: Set<string | undefined>;
  /** The lists the server answers, in turn (the last one repeats). */
  let lists: object[][];
  /** Per watch request, what the server writes: each string as one chunk, then the stream ends (or stays open). */
  let watches: { chunks: string[]; end: boolean; status?: number }[];
  let open: ServerResponse[];
  let kube: KubeRaw;

  before(async () => {
    server = createServer((req, res) => {
      const url = req.url ?? "";
      seen.push(`${req.method ?? ""} ${url}`);
      tokens.add(req.headers.authorization);
      if (req.method === "PATCH") {
        res.writeHead(url.includes("/gone/") ? 404 : 200, { "content-type": "application/json" });
        res.end(
          JSON.stringify(url.includes("/gone/") ? { kind: "Status", code: 404, reason: "NotFound" } : pod("p", "9")),
        );
        return;
      }
      if (!url.includes("watch=true")) {
        const items = lists.length > 1 ? lists.shift() : lists[0];
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ metadata: { resourceVersion: String(seen.length * 100) }, items }));
        return;
      }
      const watch = watches.shift() ?? { chunks: [], end: false };
      res.writeHead(watch.status ?? 200, { "content-type": "application/json" });
      for (const chunk of watch.chunks) res.write(chunk);
      if (watch.end) res.end();
      else open.push(res);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  beforeEach(() => {
    seen = [];
    tokens = new Set();
    open = [];
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [
        { name: "c", server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true },
      ],
      users: [{ name: "u", token: "t0ken" }],
      contexts: [{ name: "x", cluster: "c", user: "u" }],
      currentContext: "x",
    });
    kube = new KubeRaw(kc);
  });
  afterEach(() => {
    for (const res of open) res.end();
  });

  it("lists, then applies watch events split across chunks; a 410 in the stream relists and reports what vanished", async () => {
    lists = [[pod("a", "1"), pod("b", "2")], [pod("a", "7", "Running")]];
    const added = JSON.stringify({ type: "ADDED", object: pod("c", "5") });
    const modified = JSON.stringify({ type: "MODIFIED", object: pod("a", "6", "Running") });
    watches = [
      { chunks: [added.slice(0, 10), `${added.slice(10)}\n${modified}`, "\n"], end: true },
      { chunks: [`${JSON.stringify({ type: "ERROR", object: { kind: "Status", code: 410 } })}\n`], end: true },
      { chunks: [], end: false },
    ];
    const slim = (o: RawObject): KubernetesObject & { phase: string } => ({
      metadata: { name: o.metadata?.name ?? "", namespace: o.metadata?.namespace ?? "" },
      phase: (o.status as { phase?: string } | undefined)?.phase ?? "",
    });
    const informer = new LeanInformer(kube, PODS, slim);
    const events: string[] = [];
    informer.on("add", (o) => events.push(`add ${o.metadata?.name ?? ""}`));
    informer.on("update", (o) => events.push(`update ${o.metadata?.name ?? ""} ${o.phase}`));
    informer.on("delete", (o) => events.push(`delete ${o.metadata?.name ?? ""}`));
    await informer.start();
    await eventually(() => {
      expect(seen.filter((r) => r.startsWith("GET"))).to.have.length(5);
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
    expect(seen[1]).to.match(/watch=true.*resourceVersion=100$/);
    expect(seen[2]).to.match(/resourceVersion=6$/);
  });

  it("reports a refused watch to its error callbacks and stops; start() goes on from the last resourceVersion", async () => {
    lists = [[pod("a", "1")]];
    watches = [
      { chunks: ['{"kind":"Status","code":403}'], end: true, status: 403 },
      { chunks: [], end: false },
    ];
    const informer = new LeanInformer(kube, PODS);
    const errors: unknown[] = [];
    informer.on("error", (err) => errors.push(err));
    await informer.start();
    await eventually(() => {
      expect(errors).to.have.length(1);
    });
    expect(errors[0]).to.be.instanceOf(KubeRequestError).with.property("code", 403);
    await informer.start();
    await eventually(() => {
      expect(seen).to.have.length(3);
    });
    await informer.stop();
    expect(seen[2]).to.match(/watch=true.*resourceVersion=100$/);
  });

  it("sends JSON with the kubeconfig's credentials and classifies a refusal by status code", async () => {
    await kube.send("PATCH", `${PODS}/p/status`, { status: { phase: "Running" } }, STRATEGIC_MERGE_PATCH);
    const refused = await kube.send("PATCH", `${PODS}/gone/status`, {}, STRATEGIC_MERGE_PATCH).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refused).to.be.instanceOf(KubeRequestError).with.property("code", 404);
    expect(seen).to.deep.equal([`PATCH ${PODS}/p/status`, `PATCH ${PODS}/gone/status`]);
    expect([...tokens]).to.deep.equal(["Bearer t0ken"]);
  });
});
