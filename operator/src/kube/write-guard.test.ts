import { CoreV1Api, KubeConfig, KubernetesObjectApi } from "@kubernetes/client-node";
import { expect } from "chai";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { guardWrites, NotLeaderError } from "./write-guard.js";

const NAMESPACE = { apiVersion: "v1", kind: "Namespace", metadata: { name: "ci" } };
/** Discovery, which KubernetesObjectApi reads before a request. */
const RESOURCES = {
  kind: "APIResourceList",
  groupVersion: "v1",
  resources: [{ name: "namespaces", namespaced: false, kind: "Namespace", verbs: ["get", "patch"] }],
};

describe("guardWrites", () => {
  let server: Server;
  let seen: string[];
  let kc: KubeConfig;
  let allowed: boolean;

  before(async () => {
    // A real HTTP endpoint, so the requests go through client-node exactly as they would to an API server.
    server = createServer((req, res) => {
      seen.push(`${req.method ?? ""} ${req.url ?? ""}`);
      res
        .writeHead(200, { "content-type": "application/json" })
        .end(JSON.stringify(req.url === "/api/v1" ? RESOURCES : NAMESPACE));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  });
  after(async () => {
    await new Promise((resolve) => server.close(resolve));
  });
  beforeEach(() => {
    seen = [];
    allowed = false;
    kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [
        { name: "c", server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true },
      ],
      users: [{ name: "u" }],
      contexts: [{ name: "x", cluster: "c", user: "u" }],
      currentContext: "x",
    });
    guardWrites(kc, () => allowed);
  });

  it("refuses every write while the replica may not act, before anything is sent, and lets reads through", async () => {
    const core = kc.makeApiClient(CoreV1Api);
    const objects = KubernetesObjectApi.makeApiClient(kc);
    const refused = await Promise.all(
      [
        core.createNamespace({ body: NAMESPACE }),
        core.deleteNamespace({ name: "ci" }),
        core.patchNamespace({ name: "ci", body: { metadata: { labels: { a: "b" } } } }),
        objects.patch(NAMESPACE),
      ].map((p) =>
        p.then(
          () => undefined,
          (err: unknown) => err,
        ),
      ),
    );
    for (const err of refused) {
      expect(err).to.be.instanceOf(NotLeaderError);
      expect((err as Error).message).to.match(/^not the leader: refused (POST|DELETE|PATCH) \/api\/v1\/namespaces/);
    }
    expect(
      seen.filter((r) => !r.startsWith("GET ")),
      "writes that reached the server",
    ).to.deep.equal([]);
    await core.readNamespace({ name: "ci" });
    expect(seen).to.include("GET /api/v1/namespaces/ci");
  });

  it("sends writes while the replica may act, deciding again at each request", async () => {
    const core = kc.makeApiClient(CoreV1Api);
    allowed = true;
    await core.createNamespace({ body: NAMESPACE });
    allowed = false;
    const err = await core.createNamespace({ body: NAMESPACE }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(NotLeaderError);
    expect(seen).to.deep.equal(["POST /api/v1/namespaces"]);
  });
});
