import { ApiException, CoreV1Api, CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { expect } from "chai";
import { installCrds } from "../support/crds.js";
import { queueManifest } from "../support/fixtures.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";

const group = "buildkite.com";
const version = "v1alpha1";

/** Creates an object and returns the API server's refusal message, or undefined if it was admitted. */
async function refusal(
  custom: CustomObjectsApi,
  namespace: string,
  plural: string,
  body: object,
): Promise<string | undefined> {
  try {
    await custom.createNamespacedCustomObject({ group, version, namespace, plural, body });
    return undefined;
  } catch (err) {
    if (!(err instanceof ApiException)) throw err;
    expect(err.code, String(err.body)).to.equal(422);
    return (JSON.parse(String(err.body)) as { message: string }).message;
  }
}

describe("CRD validation at admission", function () {
  let kc: KubeConfig;
  let custom: CustomObjectsApi;
  let ns: string;
  let n = 0;
  const queue = (spec: Record<string, unknown>, name = `q${++n}`) =>
    refusal(custom, ns, "buildkitequeues", queueManifest(name, spec));

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    custom = kc.makeApiClient(CustomObjectsApi);
    ns = await testNamespace(kc, "crd-validation");
  });
  after(async () => {
    if (ns) await kc.makeApiClient(CoreV1Api).deleteNamespace({ name: ns });
  });

  it("admits a minimal queue and fills in the defaults", async () => {
    expect(await queue({}, "minimal")).to.equal(undefined);
    const stored = (await custom.getNamespacedCustomObject({
      group,
      version,
      namespace: ns,
      plural: "buildkitequeues",
      name: "minimal",
    })) as { spec: Record<string, unknown> };
    expect(stored.spec).to.deep.include({
      endpoint: "https://agent.buildkite.com/v3",
      agentImage: "buildkite/agent:3",
      maxJobDurationSeconds: 28800,
      paused: false,
      jobTTLSecondsAfterFinished: 3600,
      network: { denyMetadata: true, egress: "Internet" },
      jobTokens: "Required",
      agentTokenSecretRef: { name: "bk-agent-token", key: "token" },
    });
  });

  const cases: [string, Record<string, unknown>, RegExp][] = [
    [
      "an unknown shape",
      { instanceShape: "LINUX_AMD64_3X9" },
      /spec.instanceShape: Unsupported value: "LINUX_AMD64_3X9": supported values: "LINUX_AMD64_2X4"/,
    ],
    [
      "maxVCPU below the shape's vCPU",
      { instanceShape: "LINUX_ARM64_8X32", maxVCPU: 4 },
      /maxVCPU must be at least the vCPU of instanceShape \(2X4: 2, 4X16: 4, 8X32: 8/,
    ],
    [
      "a malformed role ARN",
      { aws: { roleArn: "arn:aws:iam::12345:user/bob", region: "us-east-1" } },
      /aws.roleArn must look like arn:aws:iam::123456789012:role\/NAME/,
    ],
    [
      "a malformed region",
      { aws: { roleArn: "arn:aws:iam::123456789012:role/ci", region: "Virginia" } },
      /aws.region must be an AWS region such as us-east-1/,
    ],
    [
      "a token lifetime out of range",
      { aws: { roleArn: "arn:aws:iam::123456789012:role/ci", region: "us-east-1", tokenExpirationSeconds: 60 } },
      /aws.tokenExpirationSeconds must be between 600/,
    ],
    [
      "a CIDR that is not one",
      { network: { extraDeniedCIDRs: ["10.0.0.0/33"] } },
      /network.extraDeniedCIDRs: 10.0.0.0\/33 is not a CIDR; write it like 10.0.0.0\/8/,
    ],
    [
      "a denied range of every IPv4 address",
      { network: { extraDeniedCIDRs: ["0.0.0.0/0"] } },
      /network.extraDeniedCIDRs: 0.0.0.0\/0 denies every address.*use network.egress: Restricted/,
    ],
    [
      "a denied range of every IPv6 address",
      { network: { extraDeniedCIDRs: ["::/0"] } },
      /network.extraDeniedCIDRs: ::\/0 denies every address.*use network.egress: Restricted/,
    ],
    [
      "Restricted egress with no way out",
      { network: { egress: "Restricted" } },
      /network.egress Restricted needs a proxy or at least one allowedDestinations entry/,
    ],
    [
      "a proxy outside Restricted mode",
      { network: { proxy: { url: "http://proxy:3128", cidr: "192.0.2.9/32" } } },
      /network.proxy and network.allowedDestinations apply only with network.egress Restricted/,
    ],
    [
      "a proxy URL without a port",
      { network: { egress: "Restricted", proxy: { url: "http://proxy", cidr: "192.0.2.9/32" } } },
      /network.proxy.url must be an http\(s\) URL with a port/,
    ],
    [
      "a DNS resolver with nothing to select",
      { network: { dns: [{}] } },
      /give a cidr, or a podSelector and\/or namespaceSelector/,
    ],
    [
      "a zero job duration",
      { maxJobDurationSeconds: 0 },
      /maxJobDurationSeconds must be between 1 \(one second\) and 604800 \(seven days\)/,
    ],
    [
      "a job duration over 7 days",
      { maxJobDurationSeconds: 604801 },
      /maxJobDurationSeconds must be between 1 \(one second\) and 604800/,
    ],
    [
      "a TTL over 7 days",
      { jobTTLSecondsAfterFinished: 700000 },
      /jobTTLSecondsAfterFinished must be between 0 and 604800/,
    ],
    ["a bad endpoint", { endpoint: "agent.buildkite.com" }, /endpoint must be an http\(s\) URL/],
    ["a bad queue key", { queue: "has spaces" }, /queue must be a Buildkite queue key/],
    [
      "a cache with a bad size",
      { cache: [{ name: "gomod", size: "lots", mountPath: "/cache" }] },
      /cache size must be a positive quantity such as 20Gi/,
    ],
    [
      "a cache over the secrets path",
      { cache: [{ name: "gomod", size: "1Gi", mountPath: "/var/run/secrets/x" }] },
      /cache mountPath must be an absolute path outside \/var\/run\/secrets/,
    ],
    [
      "a reserved pod label",
      { podTemplate: { labels: { "buildkite.com/queue": "x" } } },
      /podTemplate.labels may not use the buildkite.com\/ prefix/,
    ],
    [
      "a reserved env var",
      { podTemplate: { env: [{ name: "AWS_ROLE_ARN", value: "x" }] } },
      /podTemplate.env may not set BUILDKITE_AGENT_\* or AWS_\* variables/,
    ],
  ];
  for (const [what, spec, message] of cases) {
    it(`refuses ${what} with a message that says what to fix`, async () => {
      expect(await queue(spec)).to.match(message);
    });
  }

  it("refuses a queue name too long for its children's names", async () => {
    expect(await queue({}, "q".repeat(51))).to.match(/a BuildkiteQueue name may have at most 50 characters/);
  });

  it("refuses a job without a valid UUID, and any change to a job's spec", async () => {
    const job = (uuid: string) => ({
      apiVersion: `${group}/${version}`,
      kind: "BuildkiteJob",
      metadata: { name: `j-${uuid.slice(0, 8)}` },
      spec: { queueRef: { name: "minimal" }, uuid },
    });
    expect(await refusal(custom, ns, "buildkitejobs", job("not-a-uuid"))).to.match(/uuid must be a Buildkite job UUID/);
    const uuid = "0190a8f4-52c1-4b8e-9d4a-3f1c2b7e6a10";
    expect(await refusal(custom, ns, "buildkitejobs", job(uuid))).to.equal(undefined);
    const err = await custom
      .patchNamespacedCustomObject({
        group,
        version,
        namespace: ns,
        plural: "buildkitejobs",
        name: "j-0190a8f4",
        body: [{ op: "replace", path: "/spec/priority", value: 5 }],
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).to.be.instanceOf(ApiException);
    expect(String((err as ApiException<unknown>).body)).to.match(
      /a BuildkiteJob's spec cannot change; delete it and create a new one/,
    );
  });
});
