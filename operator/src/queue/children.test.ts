import { expect } from "chai";
import { queueFixture } from "../../../test/support/fixtures.js";
import { desiredCacheClaims, desiredNetworkPolicy, desiredServiceAccount } from "./children.js";
import { planQueueStatus } from "./status.js";

describe("queue children", () => {
  it("gives the ServiceAccount the IRSA annotation only when aws is set, and never an automounted token", () => {
    expect(desiredServiceAccount(queueFixture()).metadata?.annotations).to.deep.equal({});
    const sa = desiredServiceAccount(queueFixture({ aws: { roleArn: "arn:aws:iam::123456789012:role/ci", region: "us-east-1", audience: "sts.amazonaws.com", tokenExpirationSeconds: 3600 } }));
    expect(sa.metadata?.annotations).to.deep.equal({ "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/ci" });
    expect(sa.automountServiceAccountToken).to.equal(false);
    expect(sa.metadata?.ownerReferences?.[0]).to.include({ kind: "BuildkiteQueue", controller: true });
  });

  it("denies metadata endpoints and extra CIDRs by family, allows DNS, and denies all ingress", () => {
    const np = desiredNetworkPolicy(queueFixture({ network: { denyMetadata: true, egress: "Internet", extraDeniedCIDRs: ["10.0.0.0/8", "fd00::/8"] } }));
    expect(np.spec?.podSelector?.matchLabels).to.deep.equal({ "buildkite.com/queue": "linux", "app.kubernetes.io/component": "job" });
    expect(np.spec?.policyTypes).to.deep.equal(["Ingress", "Egress"]);
    expect(np.spec?.ingress).to.deep.equal([]);
    expect(np.spec?.egress).to.deep.equal([
      { ports: [{ protocol: "UDP", port: 53 }, { protocol: "TCP", port: 53 }] },
      { to: [
        { ipBlock: { cidr: "0.0.0.0/0", except: ["169.254.169.254/32", "169.254.170.2/32", "169.254.170.23/32", "10.0.0.0/8"] } },
        { ipBlock: { cidr: "::/0", except: ["fd00:ec2::254/128", "fd00:ec2::23/128", "fd00::/8"] } },
      ] },
    ]);
  });

  it("allows metadata when denyMetadata is false, and only DNS in DNSOnly mode", () => {
    const open = desiredNetworkPolicy(queueFixture({ network: { denyMetadata: false, egress: "Internet" } }));
    expect(open.spec?.egress?.[1]).to.deep.equal({ to: [{ ipBlock: { cidr: "0.0.0.0/0" } }, { ipBlock: { cidr: "::/0" } }] });
    const dns = desiredNetworkPolicy(queueFixture({ network: { denyMetadata: true, egress: "DNSOnly" } }));
    expect(dns.spec?.egress).to.have.length(1);
  });

  it("makes one cache claim per cache volume and slot", () => {
    const claims = desiredCacheClaims(queueFixture({ cache: [{ name: "gomod", size: "20Gi", mountPath: "/c", storageClassName: "fast" }] }), 3);
    expect(claims.map((c) => c.metadata?.name)).to.deep.equal(["bkq-linux-gomod-0", "bkq-linux-gomod-1", "bkq-linux-gomod-2"]);
    expect(claims[0]?.spec).to.deep.equal({ accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "20Gi" } }, storageClassName: "fast" });
  });
});

describe("planQueueStatus", () => {
  const now = new Date("2026-03-01T00:00:00Z");
  it("reports concurrency = floor(maxVCPU / shape vCPU), active jobs and Ready", () => {
    const status = planQueueStatus({ queue: queueFixture({ instanceShape: "LINUX_ARM64_4X16", maxVCPU: 18 }), activeJobs: 3, waitingJobs: 1, secret: "present" }, now);
    expect(status).to.include({ concurrency: 4, active: 3, slots: "3/4", arch: "arm64", serviceAccountName: "bkq-linux" });
    expect(status.conditions?.[0]).to.include({ type: "Ready", status: "True" });
  });
  it("says how to create a missing token Secret", () => {
    const status = planQueueStatus({ queue: queueFixture(), activeJobs: 0, waitingJobs: 0, secret: "missing" }, now);
    expect(status.conditions?.[0]).to.include({ status: "False", reason: "AgentTokenSecretMissing" });
    expect(status.conditions?.[0]?.message).to.contain("kubectl create secret generic bk-agent-token -n ci --from-literal=token=");
  });
});
