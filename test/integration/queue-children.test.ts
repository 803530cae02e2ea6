import { NetworkingV1Api, PatchStrategy, setHeaderOptions, type KubeConfig } from "@kubernetes/client-node";
import { expect } from "chai";
import { isNotFound } from "../../operator/src/kube/field-manager.js";
import type { Operator } from "../../operator/src/operator.js";
import { installCrds } from "../support/crds.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { TestObjects } from "../support/objects.js";
import { startTestOperator } from "../support/operator.js";

/** Resolves when `read` fails with 404; throws while the object still exists. */
async function gone(what: string, read: Promise<unknown>): Promise<void> {
  const found = await read.then(
    () => true,
    (err: unknown) => {
      if (isNotFound(err)) return false;
      throw err;
    },
  );
  if (found) throw new Error(`${what} still exists`);
}

const KUBE_DNS = {
  namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "kube-system" } },
  podSelector: { matchLabels: { "k8s-app": "kube-dns" } },
};
const AWS = { roleArn: "arn:aws:iam::123456789012:role/ci-deploy", region: "eu-west-1" };

describe("BuildkiteQueue children (operator in-process, real control plane and garbage collector)", function () {
  this.timeout(90_000);
  let kc: KubeConfig;
  let operator: Operator | undefined;
  let t: TestObjects;
  let networking: NetworkingV1Api;

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    networking = kc.makeApiClient(NetworkingV1Api);
    t = new TestObjects(kc, await testNamespace(kc, "queues"));
    operator = await startTestOperator(kc, "queue-children");
  });
  after(async () => {
    await operator?.stop();
    if (t.namespace) await t.core.deleteNamespace({ name: t.namespace });
  });

  const serviceAccount = (name: string) => t.core.readNamespacedServiceAccount({ name, namespace: t.namespace });
  const claimNames = async (queue: string) =>
    (
      await t.core.listNamespacedPersistentVolumeClaim({
        namespace: t.namespace,
        labelSelector: `buildkite.com/queue=${queue}`,
      })
    ).items
      .filter((c) => !c.metadata?.deletionTimestamp)
      .map((c) => c.metadata?.name)
      .sort();

  it("says how to fix a missing agent token Secret, and becomes Ready once it exists", async () => {
    await t.createQueue("tokenless", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2 });
    const waiting = await eventually(
      async () => {
        const q = await t.queue("tokenless");
        const ready = q?.status?.conditions?.find((c) => c.type === "Ready");
        expect(ready, JSON.stringify(q?.status)).to.include({ status: "False", reason: "AgentTokenSecretMissing" });
        return ready;
      },
      { what: "Ready=False on a queue without its Secret" },
    );
    expect(waiting?.message).to.equal(
      `Secret bk-agent-token not found in namespace ${t.namespace}; create it: kubectl create secret generic bk-agent-token -n ${t.namespace} --from-literal=token=<agent token> && kubectl label secret bk-agent-token -n ${t.namespace} buildkite.com/agent-token=true`,
    );
    await eventually(
      async () => {
        expect(await t.events("tokenless")).to.deep.include({
          type: "Warning",
          reason: "AgentTokenSecretMissing",
          message: waiting?.message,
        });
      },
      { what: "the warning Event" },
    );
    const job = await t.createJob("tokenless");
    await t.jobWhen(job, "QueueNotReady", (j) => {
      expect(j.status?.reason).to.equal("QueueNotReady");
    });

    await t.createTokenSecret();
    await eventually(
      async () => {
        expect((await t.queue("tokenless"))?.status?.conditions?.find((c) => c.type === "Ready")).to.include({
          status: "True",
        });
      },
      { what: "Ready=True after the Secret was created", timeoutMs: 30_000 },
    );
    await t.jobWhen(job, "Running once the queue became ready", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
  });

  it("gives a queue its ServiceAccount, the exact NetworkPolicy and its status, and no cache claim before a job needs one", async () => {
    await t.createQueue("full", {
      instanceShape: "LINUX_ARM64_4X16",
      maxVCPU: 8,
      network: { extraDeniedCIDRs: ["10.0.0.0/8", "fd00:1::/64"] },
      cache: [{ name: "gomod", size: "20Gi", mountPath: "/cache/go" }],
    });
    const queue = await eventually(
      async () => {
        const q = await t.queue("full");
        expect(q?.status?.conditions?.find((c) => c.type === "Ready")).to.include({ status: "True" });
        return q;
      },
      { what: "queue full Ready" },
    );
    expect(queue?.status).to.include({
      concurrency: 2,
      active: 0,
      slots: "0/2",
      arch: "arm64",
      serviceAccountName: "bkq-full",
      observedGeneration: 1,
    });

    const sa = await serviceAccount("bkq-full");
    expect(sa.automountServiceAccountToken).to.equal(false);
    expect(sa.metadata?.annotations ?? {}).to.not.have.property("eks.amazonaws.com/role-arn");
    expect(sa.metadata?.ownerReferences?.[0]).to.include({
      kind: "BuildkiteQueue",
      name: "full",
      uid: queue?.metadata.uid,
      controller: true,
    });

    const np = await networking.readNamespacedNetworkPolicy({ name: "bkq-full", namespace: t.namespace });
    expect(np.spec?.podSelector?.matchLabels).to.deep.equal({
      "buildkite.com/queue": "full",
      "app.kubernetes.io/component": "job",
    });
    expect(np.spec?.policyTypes).to.deep.equal(["Ingress", "Egress"]);
    expect(np.spec?.ingress ?? []).to.deep.equal([]);
    expect(JSON.parse(JSON.stringify(np.spec?.egress))).to.deep.equal([
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
          { ipBlock: { cidr: "::/0", except: ["fd00:ec2::254/128", "fd00:ec2::23/128", "fd00:1::/64"] } },
        ],
      },
    ]);
    expect(await claimNames("full")).to.deep.equal([]);
  });

  it("follows spec changes: IRSA annotation when aws is set; claims of slots beyond a lower maxVCPU go once no pod mounts them", async () => {
    await t.patchQueueSpec("full", { maxVCPU: 12, aws: AWS });
    await eventually(
      async () => {
        expect((await serviceAccount("bkq-full")).metadata?.annotations).to.include({
          "eks.amazonaws.com/role-arn": AWS.roleArn,
        });
      },
      { what: "the IRSA annotation" },
    );
    // The test cluster has no storage provisioner: the pods stay Pending, which is all this needs.
    const jobs = [
      await t.createJob("full", 0, { pipelineSlug: "app" }),
      await t.createJob("full", 0, { pipelineSlug: "app" }),
    ];
    const slots = new Map<number, string>();
    for (const job of jobs) {
      const j = await t.jobWhen(job, "its pod created", (x) => {
        expect(x.status?.podUID).to.be.a("string");
      });
      slots.set(j.status?.slot ?? -1, job);
    }
    const claims = await eventually(
      async () => {
        const names = await claimNames("full");
        expect(names).to.have.length(2);
        return names;
      },
      { what: "a claim per slot of pipeline app" },
    );
    expect(claims.map((n) => n?.replace(/-[0-9a-f]{20}-/, "-<scope>-"))).to.deep.equal([
      "bkq-full-gomod-<scope>-0",
      "bkq-full-gomod-<scope>-1",
    ]);

    await t.patchQueueSpec("full", { maxVCPU: 4 });
    await eventually(
      async () => {
        expect((await t.queue("full"))?.status).to.include({ concurrency: 1 });
      },
      { what: "concurrency 1" },
    );
    expect(await claimNames("full"), "the slot 1 claim while its pod mounts it").to.deep.equal(claims);
    await t.core.deleteNamespacedPod({ name: slots.get(1) ?? "", namespace: t.namespace, gracePeriodSeconds: 0 });
    await eventually(
      async () => {
        expect(await claimNames("full")).to.deep.equal([claims[0]]);
      },
      { what: "the surplus claim removed", timeoutMs: 30_000 },
    );
  });

  it("mounts the IRSA token and sets the AWS environment only on pods of queues with aws", async () => {
    await t.createQueue("plain", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2 });
    await t.createQueue("aws", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2, aws: AWS });
    const plainJob = await t.createJob("plain");
    const awsJob = await t.createJob("aws");
    await t.jobWhen(plainJob, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    await t.jobWhen(awsJob, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    const envNames = (pod: Awaited<ReturnType<TestObjects["pod"]>>) =>
      (pod?.spec?.containers.find((c) => c.name === "command")?.env ?? []).map((e) => e.name);
    const plain = await t.pod(plainJob);
    const aws = await t.pod(awsJob);
    expect(envNames(plain).filter((n) => n.startsWith("AWS_"))).to.deep.equal([]);
    expect(plain?.spec?.volumes?.map((v) => v.name)).to.not.include("aws-iam-token");
    expect(envNames(aws)).to.include.members([
      "AWS_ROLE_ARN",
      "AWS_WEB_IDENTITY_TOKEN_FILE",
      "AWS_REGION",
      "AWS_STS_REGIONAL_ENDPOINTS",
    ]);
    const token = aws?.spec?.volumes?.find((v) => v.name === "aws-iam-token");
    expect(token?.projected?.sources?.[0]?.serviceAccountToken).to.include({
      audience: "sts.amazonaws.com",
      path: "token",
    });
    expect(aws?.spec?.serviceAccountName).to.equal("bkq-aws");
    expect(aws?.spec?.automountServiceAccountToken).to.equal(false);
  });

  it("puts back a NetworkPolicy edited by hand, and keeps one deleted by hand (still enforced) while the queue lives", async () => {
    const policy = () => networking.readNamespacedNetworkPolicy({ name: "bkq-full", namespace: t.namespace });
    const egress = JSON.parse(JSON.stringify((await policy()).spec?.egress)) as unknown;
    // Opened up by hand: every address allowed, the metadata block gone.
    await networking.patchNamespacedNetworkPolicy(
      { name: "bkq-full", namespace: t.namespace, body: { spec: { egress: [{}] } } },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await eventually(
      async () => {
        expect(JSON.parse(JSON.stringify((await policy()).spec?.egress))).to.deep.equal(egress);
      },
      { what: "the NetworkPolicy to be restored" },
    );
    await networking.deleteNamespacedNetworkPolicy({ name: "bkq-full", namespace: t.namespace });
    const kept = await policy();
    expect(kept.metadata?.finalizers, "the NetworkPolicy's finalizer").to.deep.equal(["buildkite.com/job-pods"]);
    expect(JSON.parse(JSON.stringify(kept.spec?.egress))).to.deep.equal(egress);
  });

  it("on deletion stops the queue's pods first, ends their jobs Canceled, and only then lets the NetworkPolicy go", async () => {
    await t.createQueue("doomed", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2 });
    const job = await t.createJob("doomed");
    await t.jobWhen(job, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });
    const queue = await t.queue("doomed");
    expect(queue?.metadata.finalizers).to.deep.equal(["buildkite.com/job-pods"]);
    await t.custom.deleteNamespacedCustomObject({
      group: "buildkite.com",
      version: "v1alpha1",
      namespace: t.namespace,
      plural: "buildkitequeues",
      name: "doomed",
    });
    const phases = new Set<string>();
    let podSeen = true;
    await eventually(
      async () => {
        const [pod, np, bkj] = await Promise.all([
          t.pod(job),
          networking
            .readNamespacedNetworkPolicy({ name: "bkq-doomed", namespace: t.namespace })
            .catch((err: unknown) => {
              if (isNotFound(err)) return undefined;
              throw err;
            }),
          t.job(job),
        ]);
        if (bkj?.status?.phase) phases.add(`${bkj.status.phase}/${bkj.status.reason ?? ""}`);
        podSeen = pod !== undefined;
        // Checked on every look: a pod of the queue never runs without its policy.
        if (pod) expect(np, "the NetworkPolicy while the job's pod exists").to.not.equal(undefined);
        expect(await t.queue("doomed"), "the queue").to.equal(undefined);
        expect(np, "the NetworkPolicy").to.equal(undefined);
      },
      { what: "the queue, its pods and its policy to be gone, in that order", timeoutMs: 45_000 },
    );
    expect(podSeen).to.equal(false);
    expect([...phases]).to.include("Canceled/QueueDeleted");
  });

  it("lets the garbage collector remove every child when the queue is deleted", async () => {
    await t.custom.deleteNamespacedCustomObject({
      group: "buildkite.com",
      version: "v1alpha1",
      namespace: t.namespace,
      plural: "buildkitequeues",
      name: "full",
    });
    await eventually(
      async () => {
        await gone("ServiceAccount bkq-full", serviceAccount("bkq-full"));
        await gone(
          "NetworkPolicy bkq-full",
          networking.readNamespacedNetworkPolicy({ name: "bkq-full", namespace: t.namespace }),
        );
        expect(await claimNames("full")).to.deep.equal([]);
      },
      { what: "the queue's children to be garbage-collected", timeoutMs: 45_000 },
    );
  });
});
