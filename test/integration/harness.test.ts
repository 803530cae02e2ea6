import { ApiException, CoreV1Api, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { createPublicKey, createVerify } from "node:crypto";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { httpGet } from "../support/https-probe.js";
import { KWOK_EXIT_CODE_ANNOTATION } from "../support/kwok.js";

/** A minimal pod that passes Pod Security "restricted", with optional overrides. */
function pod(
  name: string,
  overrides: { cpu?: string; arch?: string; annotations?: Record<string, string>; privileged?: boolean } = {},
): V1Pod {
  return {
    metadata: { name, annotations: overrides.annotations ?? {} },
    spec: {
      ...(overrides.arch ? { nodeSelector: { "kubernetes.io/arch": overrides.arch } } : {}),
      securityContext: { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: "RuntimeDefault" } },
      containers: [
        {
          name: "main",
          image: "example.invalid/none:1",
          resources: { requests: { cpu: overrides.cpu ?? "100m", memory: "64Mi" } },
          securityContext: overrides.privileged
            ? { privileged: true }
            : { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
        },
      ],
    },
  };
}

describe("the local test cluster (harness smoke tests)", function () {
  this.timeout(60_000);
  let kc: KubeConfig;
  let core: CoreV1Api;
  let ns: string;

  before(async () => {
    kc = testCluster().kubeConfig();
    core = kc.makeApiClient(CoreV1Api);
    ns = await testNamespace(kc, "harness");
  });
  after(async () => {
    await core.deleteNamespace({ name: ns });
  });

  it("has KWOK nodes of both architectures with realistic capacity", async () => {
    const nodes = (await core.listNode()).items;
    const arches = new Set(nodes.map((n) => n.metadata?.labels?.["kubernetes.io/arch"]));
    expect([...arches].sort()).to.deep.equal(["amd64", "arm64"]);
    for (const node of nodes) {
      expect(node.status?.allocatable).to.include({ cpu: "16", memory: "64Gi", "ephemeral-storage": "300G" });
      expect(node.metadata?.labels?.["kubernetes.io/os"]).to.equal("linux");
    }
  });

  it("places an arm64 pod requesting 4 CPU on an arm64 node, where it reaches Running", async () => {
    await core.createNamespacedPod({ namespace: ns, body: pod("arm", { cpu: "4", arch: "arm64" }) });
    const running = await eventually(
      async () => {
        const p = await core.readNamespacedPod({ name: "arm", namespace: ns });
        if (p.status?.phase !== "Running") throw new Error(`phase ${p.status?.phase ?? "none"}`);
        return p;
      },
      { what: "the arm64 pod to run" },
    );
    const node = await core.readNode({ name: running.spec?.nodeName ?? "" });
    expect(node.metadata?.labels?.["kubernetes.io/arch"]).to.equal("arm64");
  });

  it("leaves a pod requesting more CPU than any node has Pending, reason Unschedulable", async () => {
    await core.createNamespacedPod({ namespace: ns, body: pod("huge", { cpu: "64" }) });
    const condition = await eventually(
      async () => {
        const p = await core.readNamespacedPod({ name: "huge", namespace: ns });
        const scheduled = p.status?.conditions?.find((c) => c.type === "PodScheduled");
        if (scheduled?.status !== "False") throw new Error("not yet evaluated by the scheduler");
        return { phase: p.status?.phase, reason: scheduled.reason, message: scheduled.message };
      },
      { what: "the scheduler to reject the pod" },
    );
    expect(condition.phase).to.equal("Pending");
    expect(condition.reason).to.equal("Unschedulable");
    expect(condition.message).to.match(/Insufficient cpu/);
  });

  it("takes a pod annotated with an exit code to the matching terminal phase", async () => {
    await core.createNamespacedPod({
      namespace: ns,
      body: pod("fails", { annotations: { [KWOK_EXIT_CODE_ANNOTATION]: "3" } }),
    });
    await core.createNamespacedPod({
      namespace: ns,
      body: pod("passes", { annotations: { [KWOK_EXIT_CODE_ANNOTATION]: "0" } }),
    });
    const terminal = async (name: string): Promise<{ phase?: string; exitCode?: number }> =>
      eventually(
        async () => {
          const p = await core.readNamespacedPod({ name, namespace: ns });
          const terminated = p.status?.containerStatuses?.[0]?.state?.terminated;
          if (!terminated || (p.status?.phase !== "Failed" && p.status?.phase !== "Succeeded"))
            throw new Error(`phase ${p.status?.phase ?? "none"}`);
          return { phase: p.status.phase, exitCode: terminated.exitCode };
        },
        { what: `pod ${name} to end` },
      );
    expect(await terminal("fails")).to.deep.equal({ phase: "Failed", exitCode: 3 });
    expect(await terminal("passes")).to.deep.equal({ phase: "Succeeded", exitCode: 0 });
  });

  it("refuses a privileged pod in a namespace that enforces Pod Security restricted", async () => {
    const restricted = await testNamespace(kc, "restricted", { "pod-security.kubernetes.io/enforce": "restricted" });
    try {
      const err = await core
        .createNamespacedPod({ namespace: restricted, body: pod("priv", { privileged: true }) })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).to.be.instanceOf(ApiException);
      expect((err as ApiException<unknown>).code).to.equal(403);
      const status = JSON.parse(String((err as ApiException<unknown>).body)) as { message: string };
      expect(status.message).to.match(/violates PodSecurity "restricted:latest": privileged/);
      // the same pod without privilege is admitted: the namespace is enforcing, not refusing everything
      await core.createNamespacedPod({ namespace: restricted, body: pod("plain") });
    } finally {
      await core.deleteNamespace({ name: restricted });
    }
  });

  it("garbage-collects an object whose owner has been deleted", async () => {
    const owner = await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: "owner" } } });
    await core.deleteNamespacedConfigMap({ name: "owner", namespace: ns });
    await core.createNamespacedConfigMap({
      namespace: ns,
      body: {
        metadata: {
          name: "orphan",
          ownerReferences: [{ apiVersion: "v1", kind: "ConfigMap", name: "owner", uid: owner.metadata?.uid ?? "" }],
        },
      },
    });
    await eventually(
      async () => {
        const gone = await core.readNamespacedConfigMap({ name: "orphan", namespace: ns }).then(
          () => false,
          (e: unknown) => e instanceof ApiException && e.code === 404,
        );
        if (!gone) throw new Error("orphan still present");
      },
      { what: "the garbage collector to remove the orphan" },
    );
  });

  it("issues projected ServiceAccount tokens whose signature verifies against the published OIDC keys", async () => {
    await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: "ci" } } });
    const request = await core.createNamespacedServiceAccountToken({
      name: "ci",
      namespace: ns,
      body: { spec: { audiences: ["sts.amazonaws.com"], expirationSeconds: 600 } },
    });
    const token = request.status?.token ?? "";
    const [header = "", payload = "", signature = ""] = token.split(".");
    const server = testCluster().server;
    // anonymous, like an STS fetching a public OIDC provider's keys
    const discovery = JSON.parse(
      (await httpGet(`${server}/.well-known/openid-configuration`, { ca: testCluster().pki.caCert })).body,
    ) as { issuer: string; jwks_uri: string };
    expect(discovery.issuer).to.equal(server);
    const jwksUrl = new URL(new URL(discovery.jwks_uri).pathname, server).toString();
    const jwks = JSON.parse((await httpGet(jwksUrl, { ca: testCluster().pki.caCert })).body) as {
      keys: { kid: string }[];
    };
    const kid = (JSON.parse(Buffer.from(header, "base64url").toString()) as { kid: string; alg: string }).kid;
    const jwk = jwks.keys.find((k) => k.kid === kid);
    expect(jwk, "a published key matching the token's kid").to.not.equal(undefined);
    const verified = createVerify("RSA-SHA256")
      .update(`${header}.${payload}`)
      .verify(
        createPublicKey({ key: jwk as unknown as import("node:crypto").JsonWebKey, format: "jwk" }),
        Buffer.from(signature, "base64url"),
      );
    expect(verified).to.equal(true);
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString()) as {
      iss: string;
      aud: string[];
      sub: string;
    };
    expect(claims).to.include({ iss: server, sub: `system:serviceaccount:${ns}:ci` });
    expect(claims.aud).to.deep.equal(["sts.amazonaws.com"]);
    // a tampered payload does not verify
    const forged = Buffer.from(JSON.stringify({ ...claims, sub: "system:serviceaccount:kube-system:admin" })).toString(
      "base64url",
    );
    expect(
      createVerify("RSA-SHA256")
        .update(`${header}.${forged}`)
        .verify(
          createPublicKey({ key: jwk as unknown as import("node:crypto").JsonWebKey, format: "jwk" }),
          Buffer.from(signature, "base64url"),
        ),
    ).to.equal(false);
  });
});
