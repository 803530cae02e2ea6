import { CoreV1Api, KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { createRefusal } from "../../operator/src/kube/field-manager.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";

const RESTRICTED = {
  "pod-security.kubernetes.io/enforce": "restricted",
  "pod-security.kubernetes.io/enforce-version": "latest",
};
const SECURE = {
  allowPrivilegeEscalation: false,
  capabilities: { drop: ["ALL"] },
  runAsNonRoot: true,
  seccompProfile: { type: "RuntimeDefault" },
};
const pod = (name: string, spec: Partial<NonNullable<V1Pod["spec"]>> = {}): V1Pod => ({
  metadata: { name },
  spec: { containers: [{ name: "c", image: "busybox", securityContext: SECURE }], ...spec },
});

async function failure(write: () => Promise<unknown>): Promise<unknown> {
  try {
    await write();
  } catch (err) {
    return err;
  }
  throw new Error("the API server accepted the write");
}

/**
 * The job controller retries a create its own RBAC denies (fixing the role cures it) and fails the job whose pod or
 * claim admission refuses. {@link createRefusal} tells them apart by the Status alone: checked here against what this
 * kube-apiserver really answers.
 */
describe("Create refusals as the real API server words them: RBAC denials are told from admission refusals", function () {
  this.timeout(60_000);
  let admin: CoreV1Api;
  let nobody: CoreV1Api;
  let namespace: string;

  before(async () => {
    const kc = testCluster().kubeConfig();
    admin = kc.makeApiClient(CoreV1Api);
    namespace = await testNamespace(kc, "refusals", RESTRICTED);
    // A ServiceAccount without any role: every write it makes is denied by RBAC.
    await admin.createNamespacedServiceAccount({ namespace, body: { metadata: { name: "nobody" } } });
    const token =
      (
        await admin.createNamespacedServiceAccountToken({
          name: "nobody",
          namespace,
          body: { spec: { audiences: [] } },
        })
      ).status?.token ?? "";
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error("no cluster in the kubeconfig");
    const user = new KubeConfig();
    user.loadFromOptions({
      clusters: [cluster],
      users: [{ name: "nobody", token }],
      contexts: [{ name: "nobody", cluster: cluster.name, user: "nobody" }],
      currentContext: "nobody",
    });
    nobody = user.makeApiClient(CoreV1Api);
  });
  after(async () => {
    await admin.deleteNamespace({ name: namespace });
  });

  it("calls a create that RBAC does not allow a denial, for pods and for cache claims", async () => {
    expect(createRefusal(await failure(() => nobody.createNamespacedPod({ namespace, body: pod("p") })))).to.equal(
      "denied",
    );
    const claim = {
      metadata: { name: "c" },
      spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "1Gi" } } },
    };
    expect(
      createRefusal(await failure(() => nobody.createNamespacedPersistentVolumeClaim({ namespace, body: claim }))),
    ).to.equal("denied");
  });

  it("calls PodSecurity, a missing RuntimeClass, a quota and validation refusals of the object", async () => {
    const privileged = pod("privileged", {
      containers: [{ name: "c", image: "busybox", securityContext: { privileged: true } }],
    });
    expect(createRefusal(await failure(() => admin.createNamespacedPod({ namespace, body: privileged })))).to.equal(
      "refused",
    );
    const noRuntime = pod("no-runtime", { runtimeClassName: "no-such-runtime" });
    expect(createRefusal(await failure(() => admin.createNamespacedPod({ namespace, body: noRuntime })))).to.equal(
      "refused",
    );
    expect(
      createRefusal(await failure(() => admin.createNamespacedPod({ namespace, body: pod("Not_A_Name") }))),
    ).to.equal("refused");
    await admin.createNamespacedResourceQuota({
      namespace,
      body: { metadata: { name: "none" }, spec: { hard: { pods: "0" } } },
    });
    let attempt = 0;
    await eventually(
      async () => {
        expect(
          createRefusal(
            await failure(() => admin.createNamespacedPod({ namespace, body: pod(`quota-${String(++attempt)}`) })),
          ),
        ).to.equal("refused");
      },
      { what: "the quota to refuse a pod" },
    );
  });
});
