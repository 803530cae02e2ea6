import { expect } from "chai";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import { DEFAULT_CLUSTER_DNS, parseDnsPeer } from "../config/config.js";
import { desiredCacheClaims, desiredNetworkPolicy, desiredServiceAccount, proxyEnv } from "./children.js";
import { covers } from "./controller.js";
import { planQueueStatus } from "./status.js";

const DNS = parseDnsPeer(DEFAULT_CLUSTER_DNS);
const KUBE_DNS = {
  namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "kube-system" } },
  podSelector: { matchLabels: { "k8s-app": "kube-dns" } },
};

describe("queue children", () => {
  it("gives the ServiceAccount the IRSA annotation only when aws is set, and never an automounted token", () => {
    expect(desiredServiceAccount(queueFixture()).metadata?.annotations).to.deep.equal({});
    const sa = desiredServiceAccount(
      queueFixture({
        aws: {
          roleArn: "arn:aws:iam::123456789012:role/ci",
          region: "us-east-1",
          audience: "sts.amazonaws.com",
          tokenExpirationSeconds: 3600,
        },
      }),
    );
    expect(sa.metadata?.annotations).to.deep.equal({
      "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/ci",
    });
    expect(sa.automountServiceAccountToken).to.equal(false);
    expect(sa.metadata?.ownerReferences?.[0]).to.include({ kind: "BuildkiteQueue", controller: true });
  });

  it("denies metadata endpoints and extra CIDRs by family, allows DNS to the cluster DNS only, and denies all ingress", () => {
    const np = desiredNetworkPolicy(
      queueFixture({
        network: { denyMetadata: true, egress: "Internet", extraDeniedCIDRs: ["10.0.0.0/8", "fd00::/8"] },
      }),
      DNS,
    );
    expect(np.spec?.podSelector?.matchLabels).to.deep.equal({
      "buildkite.com/queue": "linux",
      "app.kubernetes.io/component": "job",
    });
    expect(np.spec?.policyTypes).to.deep.equal(["Ingress", "Egress"]);
    expect(np.spec?.ingress).to.deep.equal([]);
    expect(np.spec?.egress).to.deep.equal([
      {
        to: [KUBE_DNS],
        ports: [
          { protocol: "UDP", port: 53 },
          { protocol: "TCP", port: 53 },
        ],
      },
      {
        to: [
          {
            ipBlock: {
              cidr: "0.0.0.0/0",
              except: ["169.254.169.254/32", "169.254.170.2/32", "169.254.170.23/32", "10.0.0.0/8"],
            },
          },
          { ipBlock: { cidr: "::/0", except: ["fd00:ec2::254/128", "fd00:ec2::23/128", "fd00::/8"] } },
        ],
      },
    ]);
  });

  it("allows metadata when denyMetadata is false", () => {
    const open = desiredNetworkPolicy(queueFixture({ network: { denyMetadata: false, egress: "Internet" } }), DNS);
    expect(open.spec?.egress?.[1]).to.deep.equal({
      to: [{ ipBlock: { cidr: "0.0.0.0/0" } }, { ipBlock: { cidr: "::/0" } }],
    });
  });

  it("never lets port 53 reach an address outside the named resolvers (an internal resolver in extraDeniedCIDRs stays denied)", () => {
    const np = desiredNetworkPolicy(
      queueFixture({ network: { denyMetadata: true, egress: "Internet", extraDeniedCIDRs: ["10.0.0.5/32"] } }),
      DNS,
    );
    for (const rule of np.spec?.egress ?? []) {
      // Every rule that allows port 53 names where to; no rule allows port 53 to every address.
      if (rule.ports?.some((p) => p.port === 53)) expect(rule.to).to.deep.equal([KUBE_DNS]);
      else expect(JSON.stringify(rule.to)).to.contain("10.0.0.5/32");
    }
    const own = desiredNetworkPolicy(
      queueFixture({ network: { denyMetadata: true, egress: "Internet", dns: [{ cidr: "10.96.0.10/32" }] } }),
      DNS,
    );
    expect(own.spec?.egress?.[0]?.to).to.deep.equal([{ ipBlock: { cidr: "10.96.0.10/32" } }]);
  });

  it("allows no DNS at all when the queue names no resolver (an egress rule without `to` would match every address)", () => {
    const none = desiredNetworkPolicy(
      queueFixture({
        network: {
          denyMetadata: true,
          egress: "Restricted",
          dns: [],
          allowedDestinations: [{ cidr: "192.0.2.10/32" }],
        },
      }),
      DNS,
    );
    expect(none.spec?.egress).to.deep.equal([{ to: [{ ipBlock: { cidr: "192.0.2.10/32" } }] }]);
    for (const rule of none.spec?.egress ?? []) expect(rule.to, "every rule says where to").to.not.be.empty;
  });

  it("in Restricted mode allows DNS, the named destinations and the proxy's port, nothing else, and sets the proxy env", () => {
    const queue = queueFixture({
      network: {
        denyMetadata: true,
        egress: "Restricted",
        allowedDestinations: [{ cidr: "192.0.2.10/32", ports: [{ port: 443, protocol: "TCP" }] }],
        proxy: { url: "http://egress-proxy.ci.svc:3128", podSelector: { app: "egress-proxy" }, noProxy: [".internal"] },
      },
    });
    expect(desiredNetworkPolicy(queue, DNS).spec?.egress).to.deep.equal([
      {
        to: [KUBE_DNS],
        ports: [
          { protocol: "UDP", port: 53 },
          { protocol: "TCP", port: 53 },
        ],
      },
      { to: [{ ipBlock: { cidr: "192.0.2.10/32" } }], ports: [{ protocol: "TCP", port: 443 }] },
      { to: [{ podSelector: { matchLabels: { app: "egress-proxy" } } }], ports: [{ protocol: "TCP", port: 3128 }] },
    ]);
    const env = Object.fromEntries(proxyEnv(queue).map((e) => [e.name, e.value]));
    expect(env).to.include({
      HTTPS_PROXY: "http://egress-proxy.ci.svc:3128",
      http_proxy: "http://egress-proxy.ci.svc:3128",
      NO_PROXY: "localhost,127.0.0.1,::1,192.0.2.10/32,.internal",
    });
    expect(proxyEnv(queueFixture())).to.deep.equal([]);
  });

  describe("cache claims", () => {
    const gomod = {
      name: "gomod",
      size: "20Gi",
      mountPath: "/c",
      storageClassName: "fast",
      scope: "Pipeline" as const,
    };
    const jobOf = (pipelineSlug: string, branch?: string) => {
      const j = jobFixture();
      j.spec = { ...j.spec, pipelineSlug, ...(branch !== undefined ? { branch } : {}) };
      return j;
    };

    it("makes one claim per cache volume for the job's pipeline and slot, labelled with its cache, scope and slot, owned by the queue", () => {
      const queue = queueFixture({ cache: [gomod, { name: "npm", size: "5Gi", mountPath: "/n", scope: "Branch" }] });
      const claims = desiredCacheClaims(queue, jobOf("web", "main"), 2);
      expect(claims).to.have.length(2);
      const [go, npm] = claims;
      expect(go?.metadata?.name).to.match(/^bkq-linux-gomod-[0-9a-f]{20}-2$/);
      expect(go?.metadata?.labels).to.deep.equal({
        "app.kubernetes.io/managed-by": "buildkite-operator",
        "buildkite.com/queue": "linux",
        "buildkite.com/slot": "2",
        "buildkite.com/cache": "gomod",
        "buildkite.com/cache-scope": go?.metadata?.name?.split("-")[3],
      });
      expect(go?.metadata?.annotations).to.deep.equal({ "buildkite.com/pipeline": "web" });
      expect(npm?.metadata?.annotations).to.deep.equal({
        "buildkite.com/pipeline": "web",
        "buildkite.com/branch": "main",
      });
      expect(go?.metadata?.ownerReferences?.[0]).to.include({
        kind: "BuildkiteQueue",
        name: "linux",
        controller: true,
      });
      expect(go?.spec).to.deep.equal({
        accessModes: ["ReadWriteOnce"],
        resources: { requests: { storage: "20Gi" } },
        storageClassName: "fast",
      });
    });

    it("never gives two pipelines the same claim; one pipeline's jobs share theirs per slot, across branches unless Branch-scoped", () => {
      const queue = queueFixture({ cache: [gomod] });
      const name = (pipeline: string, slot: number, branch?: string, q = queue) =>
        desiredCacheClaims(q, jobOf(pipeline, branch), slot)[0]?.metadata?.name;
      expect(name("web", 0)).to.not.equal(name("deploy", 0));
      expect(name("web", 0, "main")).to.equal(name("web", 0, "pr-1"));
      expect(name("web", 0)).to.not.equal(name("web", 1));
      const branched = queueFixture({ cache: [{ ...gomod, scope: "Branch" }] });
      expect(name("web", 0, "main", branched)).to.not.equal(name("web", 0, "pr-1", branched));
      expect(name("web", 0, "main", branched)).to.equal(name("web", 0, "main", branched));
      expect(name("web", 0, "main", branched)).to.not.equal(name("web", 0, "main"));
    });
  });
});

describe("covers (drift of a child)", () => {
  const desired = desiredNetworkPolicy(queueFixture(), DNS);
  const served = (): Record<string, unknown> => {
    // As the API server serves it: defaults and other managers' fields added, empty lists dropped.
    const copy = JSON.parse(JSON.stringify(desired)) as {
      metadata: Record<string, unknown>;
      spec: Record<string, unknown>;
    };
    copy.metadata.resourceVersion = "7";
    copy.metadata.labels = { ...(copy.metadata.labels as object), team: "ci" };
    delete copy.spec.ingress;
    return copy;
  };
  it("accepts what the API server adds, and sees a rule opened up, added or removed by hand", () => {
    expect(covers(served(), desired)).to.equal(true);
    const opened = served();
    (opened.spec as { egress: unknown[] }).egress = [{}];
    expect(covers(opened, desired)).to.equal(false);
    const added = served();
    (added.spec as { egress: unknown[] }).egress.push({});
    expect(covers(added, desired)).to.equal(false);
    const noFinalizer = served();
    (noFinalizer.metadata as { finalizers: unknown[] }).finalizers = [];
    expect(covers(noFinalizer, desired)).to.equal(false);
  });
});

describe("planQueueStatus", () => {
  const now = new Date("2026-03-01T00:00:00Z");
  it("reports concurrency = floor(maxVCPU / shape vCPU), active jobs and Ready", () => {
    const status = planQueueStatus(
      {
        queue: queueFixture({ instanceShape: "LINUX_ARM64_4X16", maxVCPU: 18 }),
        activeJobs: 3,
        waitingJobs: 1,
        secret: "present",
      },
      now,
    );
    expect(status).to.include({
      concurrency: 4,
      active: 3,
      slots: "3/4",
      arch: "arm64",
      serviceAccountName: "bkq-linux",
    });
    expect(status.conditions?.[0]).to.include({ type: "Ready", status: "True" });
  });
  it("says how to create a missing token Secret", () => {
    const status = planQueueStatus({ queue: queueFixture(), activeJobs: 0, waitingJobs: 0, secret: "missing" }, now);
    expect(status.conditions?.[0]).to.include({ status: "False", reason: "AgentTokenSecretMissing" });
    expect(status.conditions?.[0]?.message).to.contain(
      "kubectl create secret generic bk-agent-token -n ci --from-literal=token=",
    );
  });
});
