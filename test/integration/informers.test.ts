import { CoreV1Api, KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { createServer, type Server } from "node:http";
import { connect, type AddressInfo } from "node:net";
import winston from "winston";
import { LABELS, MANAGED_BY } from "../../operator/src/api/keys.js";
import { realClock } from "../../operator/src/kube/clock.js";
import { createInformers, type InformerSet } from "../../operator/src/kube/informers.js";
import { copyOf } from "../../operator/src/wiring.js";
import { installCrds } from "../support/crds.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";

const JOB_POD = { [LABELS.managedBy]: MANAGED_BY, [LABELS.component]: "job" };
const pod = (name: string, labels: Record<string, string> = JOB_POD): V1Pod => ({
  metadata: { name, labels, annotations: { note: "dropped from the cache" } },
  spec: { containers: [{ name: "agent", image: "busybox", env: [{ name: "X", value: "y" }] }] },
});

/** A plain HTTP proxy that tunnels CONNECT requests (what `proxy-url` points client-node at); counts its tunnels. */
async function tunnelProxy(): Promise<{ server: Server; url: string; tunnels: () => number }> {
  let tunnels = 0;
  const server = createServer();
  server.on("connect", (req, client, head) => {
    tunnels++;
    const [host = "", port = ""] = (req.url ?? "").split(":");
    const upstream = connect(Number(port), host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, tunnels: () => tunnels };
}

async function started(informers: InformerSet): Promise<InformerSet> {
  await Promise.all(informers.all.map((i) => i.start()));
  await Promise.all(informers.all.map((i) => i.waitForSync(20_000)));
  return informers;
}

/**
 * The operator's informers (kube/informers.ts) against a real API server: the lean list-and-watch, and client-node's
 * informer when the cluster is reached through a proxy. What reaches the caches is the same either way.
 */
describe("Informers: the operator's caches from a real API server", function () {
  this.timeout(60_000);
  const logger = winston.createLogger({ silent: true });
  let kc: KubeConfig;
  let core: CoreV1Api;
  let namespace: string;
  let informers: InformerSet | undefined;

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    core = kc.makeApiClient(CoreV1Api);
    namespace = await testNamespace(kc, "informers");
  });
  afterEach(async () => {
    await Promise.all(informers?.all.map((i) => i.stop()) ?? []);
    informers = undefined;
  });
  after(async () => {
    await core.deleteNamespace({ name: namespace });
  });

  it("lists and watches the operator's own objects as plain JSON, slimmed, through the KubeConfig's hooks", async () => {
    await core.createNamespacedPod({ namespace, body: pod("listed") });
    await core.createNamespacedPod({ namespace, body: pod("not-ours", { app: "other" }) });
    const hooked = copyOf(kc);
    const requests: string[] = [];
    const authenticate = hooked.applySecurityAuthentication.bind(hooked);
    hooked.applySecurityAuthentication = async (ctx) => {
      requests.push(`${ctx.getHttpMethod()} ${ctx.getUrl()}`);
      await authenticate(ctx);
    };
    const { caches } = (informers = await started(createInformers(hooked, realClock, logger, [namespace])));
    await core.createNamespacedPod({ namespace, body: pod("watched") });
    await core.createNamespacedServiceAccount({
      namespace,
      body: { metadata: { name: "sa", labels: { [LABELS.managedBy]: MANAGED_BY } } },
    });
    await eventually(() => {
      expect(caches.pods.get("watched", namespace)).to.not.equal(undefined);
      expect(caches.serviceAccounts.get("sa", namespace)).to.not.equal(undefined);
    });
    expect(caches.pods.list(namespace).map((p) => p.metadata?.name)).to.have.members(["listed", "watched"]);
    for (const name of ["listed", "watched"]) {
      const cached = caches.pods.get(name, namespace);
      // Listed or watched, a date-time field is the API server's ISO string.
      expect(cached?.metadata?.creationTimestamp).to.be.a("string");
      expect(cached?.metadata).to.not.have.any.keys("annotations", "managedFields");
      expect(cached?.spec?.containers[0]).to.include({ name: "agent" }).and.not.have.any.keys("env");
    }
    await core.deleteNamespacedPod({ name: "listed", namespace, gracePeriodSeconds: 0 });
    await eventually(() => {
      expect(caches.pods.get("listed", namespace)).to.equal(undefined);
    });
    // Each kind's list and watch went through the KubeConfig's authentication, with the kind's label selector.
    const podWatches = requests.filter((r) => r.includes(`/namespaces/${namespace}/pods?`) && r.includes("watch=true"));
    expect(podWatches).to.have.length.at.least(1);
    expect(decodeURIComponent(podWatches[0] ?? "")).to.include(
      `labelSelector=${LABELS.managedBy}=${MANAGED_BY},${LABELS.component}=job`,
    );
    expect(requests.filter((r) => r.includes("watch=true"))).to.have.length.at.least(6);
  });

  it("through a proxy (proxy-url), uses client-node's informers, which list and watch the same objects", async () => {
    const proxy = await tunnelProxy();
    try {
      const proxied = new KubeConfig();
      proxied.loadFromOptions({
        clusters: kc.clusters.map((c) => ({ ...c, proxyUrl: proxy.url })),
        users: kc.users,
        contexts: kc.contexts,
        currentContext: kc.currentContext,
      });
      const { caches } = (informers = await started(createInformers(proxied, realClock, logger, [namespace])));
      await core.createNamespacedPod({ namespace, body: pod("proxied") });
      await eventually(() => {
        expect(caches.pods.get("proxied", namespace)?.metadata).to.not.have.any.keys("annotations");
      });
      expect(caches.pods.list(namespace).map((p) => p.metadata?.name)).to.include.members(["watched", "proxied"]);
      expect(caches.serviceAccounts.get("sa", namespace)).to.not.equal(undefined);
      expect(caches.pods.get("not-ours", namespace)).to.equal(undefined);
      expect(proxy.tunnels()).to.be.at.least(1);
    } finally {
      await Promise.all(informers?.all.map((i) => i.stop()) ?? []);
      informers = undefined;
      proxy.server.closeAllConnections();
      await new Promise((resolve) => proxy.server.close(resolve));
    }
  });
});
