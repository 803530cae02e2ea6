import { expect } from "chai";
import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import type { InstanceShape } from "../api/shapes.js";
import { desiredCacheClaims } from "../queue/children.js";
import { buildPod, IRSA_TOKEN_DIR } from "./pod-builder.js";

const job = jobFixture();
const containerOf = (pod: V1Pod, name: string): V1Container => {
  const found = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find((c) => c.name === name);
  if (!found) throw new Error(`no ${name} container`);
  return found;
};
const agentOf = (pod: V1Pod): V1Container => containerOf(pod, "agent");
const envOf = (pod: V1Pod, name = "agent"): Record<string, unknown> =>
  Object.fromEntries((containerOf(pod, name).env ?? []).map((e) => [e.name, e.value ?? e.valueFrom]));

describe("buildPod", () => {
  const shapes: [InstanceShape, string, string, string, string][] = [
    ["LINUX_AMD64_2X4", "amd64", "2", "4Gi", "47G"],
    ["LINUX_AMD64_4X16", "amd64", "4", "16Gi", "95G"],
    ["LINUX_AMD64_8X32", "amd64", "8", "32Gi", "158G"],
    ["LINUX_AMD64_16X64", "amd64", "16", "64Gi", "284G"],
    ["LINUX_AMD64_32X128", "amd64", "32", "128Gi", "544G"],
    ["LINUX_AMD64_64X256", "amd64", "64", "256Gi", "1056G"],
    ["LINUX_ARM64_2X4", "arm64", "2", "4Gi", "47G"],
    ["LINUX_ARM64_4X16", "arm64", "4", "16Gi", "95G"],
    ["LINUX_ARM64_8X32", "arm64", "8", "32Gi", "158G"],
    ["LINUX_ARM64_16X64", "arm64", "16", "64Gi", "284G"],
    ["LINUX_ARM64_32X128", "arm64", "32", "128Gi", "544G"],
    ["LINUX_ARM64_64X256", "arm64", "64", "256Gi", "1056G"],
  ];
  for (const [shape, arch, cpu, memory, disk] of shapes) {
    it(`sizes ${shape} as ${cpu} CPU / ${memory} / ${disk} on ${arch}, requests equal to limits`, () => {
      const pod = buildPod(queueFixture({ instanceShape: shape, maxVCPU: 64 }), job);
      // The pod as a whole is the shape; the command may use all of it and holds the disk.
      expect(pod.spec?.resources).to.deep.equal({ requests: { cpu, memory }, limits: { cpu, memory } });
      expect(containerOf(pod, "command").resources?.limits).to.deep.equal({ cpu, memory, "ephemeral-storage": disk });
      expect(pod.spec?.nodeSelector).to.deep.equal({ "kubernetes.io/arch": arch, "kubernetes.io/os": "linux" });
      expect(pod.spec?.volumes?.[0]).to.deep.equal({ name: "workspace", emptyDir: { sizeLimit: disk } });
    });
  }

  it("runs the agent for exactly this job", () => {
    const agent = agentOf(buildPod(queueFixture(), job));
    expect(agent.name).to.equal("agent");
    expect([...(agent.command ?? []), ...(agent.args ?? [])]).to.deep.equal([
      "buildkite-agent",
      "start",
      "--reflect-exit-status",
    ]);
    expect(envOf(buildPod(queueFixture(), job))).to.include({
      BUILDKITE_AGENT_ACQUIRE_JOB: job.spec.uuid,
      BUILDKITE_KUBERNETES_EXEC: "true",
      BUILDKITE_CONTAINER_COUNT: "2",
    });
    expect(
      agent.lifecycle?.preStop?.exec?.command,
      "SIGQUIT before SIGTERM: the agent cancels its job at once",
    ).to.deep.equal(["/bin/sh", "-c", "kill -QUIT 1"]);
  });

  it("passes endpoint, queue tag and the token from the queue's Secret by reference", () => {
    const env = envOf(buildPod(queueFixture({ endpoint: "http://127.0.0.1:9999/v3", queue: "linux-medium" }), job));
    expect(env.BUILDKITE_AGENT_ENDPOINT).to.equal("http://127.0.0.1:9999/v3");
    expect(env.BUILDKITE_AGENT_TAGS).to.equal("queue=linux-medium");
    expect(env.BUILDKITE_AGENT_TOKEN).to.deep.equal({ secretKeyRef: { name: "bk-agent-token", key: "token" } });
  });

  it("satisfies Pod Security restricted and mounts no API token", () => {
    const pod = buildPod(queueFixture(), job);
    expect(pod.spec?.securityContext).to.deep.include({
      runAsNonRoot: true,
      seccompProfile: { type: "RuntimeDefault" },
    });
    for (const c of [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])])
      expect(c.securityContext, c.name).to.deep.equal({
        allowPrivilegeEscalation: false,
        capabilities: { drop: ["ALL"] },
        runAsNonRoot: true,
      });
    expect(pod.spec?.shareProcessNamespace).to.equal(false);
    expect(pod.spec?.automountServiceAccountToken).to.equal(false);
    expect(pod.spec?.hostNetwork ?? false).to.equal(false);
    expect(pod.spec?.volumes?.some((v) => v.hostPath)).to.equal(false);
    expect(pod.spec?.restartPolicy).to.equal("Never");
  });

  it("stops the job at maxJobDurationSeconds", () => {
    expect(buildPod(queueFixture({ maxJobDurationSeconds: 600 }), job).spec?.activeDeadlineSeconds).to.equal(600);
  });

  it("labels the pod (with the slot and shape it runs in), owns it by its BuildkiteJob and records a stable spec hash", () => {
    const pod = buildPod(queueFixture(), job);
    expect(pod.metadata?.name).to.equal(job.metadata.name);
    expect(pod.metadata?.labels).to.include({
      "buildkite.com/queue": "linux",
      "buildkite.com/job": job.metadata.name,
      "app.kubernetes.io/managed-by": "buildkite-operator",
    });
    expect(pod.metadata?.labels).to.include({ "buildkite.com/slot": "0", "buildkite.com/shape": "LINUX_AMD64_4X16" });
    expect(buildPod(queueFixture(), job, 3).metadata?.labels).to.include({ "buildkite.com/slot": "3" });
    expect(pod.metadata?.ownerReferences).to.deep.equal([
      {
        apiVersion: "buildkite.com/v1alpha1",
        kind: "BuildkiteJob",
        name: job.metadata.name,
        uid: job.metadata.uid,
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
    const hash = pod.metadata?.annotations?.["buildkite.com/spec-hash"];
    expect(hash).to.match(/^[0-9a-f]{16}$/);
    expect(buildPod(queueFixture(), job).metadata?.annotations?.["buildkite.com/spec-hash"]).to.equal(hash);
    expect(
      buildPod(queueFixture({ agentImage: "other:1" }), job).metadata?.annotations?.["buildkite.com/spec-hash"],
    ).to.not.equal(hash);
  });

  it("has no AWS environment or token volume without aws", () => {
    const pod = buildPod(queueFixture(), job);
    expect(Object.keys(envOf(pod, "command")).filter((k) => k.startsWith("AWS_"))).to.deep.equal([]);
    expect(pod.spec?.volumes?.map((v) => v.name)).to.deep.equal(["workspace", "buildkite-bin"]);
  });

  it("projects an IRSA token and sets the AWS environment when aws is set", () => {
    const aws = {
      roleArn: "arn:aws:iam::123456789012:role/ci",
      region: "eu-west-1",
      audience: "sts.amazonaws.com",
      tokenExpirationSeconds: 3600,
    };
    const pod = buildPod(queueFixture({ aws }), job);
    expect(
      Object.keys(envOf(pod)).filter((k) => k.startsWith("AWS_")),
      "the agent's env",
    ).to.deep.equal([]);
    expect(envOf(pod, "command")).to.include({
      AWS_ROLE_ARN: aws.roleArn,
      AWS_WEB_IDENTITY_TOKEN_FILE: `${IRSA_TOKEN_DIR}/token`,
      AWS_REGION: "eu-west-1",
      AWS_STS_REGIONAL_ENDPOINTS: "regional",
    });
    expect(envOf(pod, "command")).to.not.have.property("AWS_ENDPOINT_URL_STS");
    expect(
      envOf(buildPod(queueFixture({ aws: { ...aws, stsEndpoint: "https://sts.example.internal" } }), job), "command"),
    ).to.include({ AWS_ENDPOINT_URL_STS: "https://sts.example.internal" });
    expect(pod.spec?.volumes?.find((v) => v.name === "aws-iam-token")?.projected?.sources).to.deep.equal([
      { serviceAccountToken: { audience: "sts.amazonaws.com", expirationSeconds: 3600, path: "token" } },
    ]);
    expect(agentOf(pod).volumeMounts?.map((m) => m.name)).to.deep.equal(["workspace"]);
    expect(containerOf(pod, "command").volumeMounts).to.deep.include({
      name: "aws-iam-token",
      mountPath: IRSA_TOKEN_DIR,
      readOnly: true,
    });
    expect(pod.spec?.serviceAccountName).to.equal("bkq-linux");
  });

  it("names the AWS role session after pipeline, build and job, within STS's 64 characters of [\\w+=,.@-]", () => {
    const aws = {
      roleArn: "arn:aws:iam::123456789012:role/ci",
      region: "eu-west-1",
      audience: "sts.amazonaws.com",
      tokenExpirationSeconds: 3600,
    };
    const named = { ...job, spec: { ...job.spec, pipelineSlug: "deploy-api", buildNumber: 42 } };
    expect(envOf(buildPod(queueFixture({ aws }), named), "command").AWS_ROLE_SESSION_NAME).to.equal(
      `bk-deploy-api-42-${job.spec.uuid}`,
    );
    const long = {
      ...job,
      spec: { ...job.spec, pipelineSlug: "a-very-long-pipeline-slug/with spaces".repeat(3), buildNumber: 123456 },
    };
    const name = String(envOf(buildPod(queueFixture({ aws }), long), "command").AWS_ROLE_SESSION_NAME);
    expect(name).to.have.length.at.most(64);
    expect(name).to.match(/^[\w+=,.@-]{2,64}$/);
    expect(name.endsWith(`-123456-${job.spec.uuid}`)).to.equal(true);
  });

  it("mounts the cache claims of its pipeline and slot, exactly the claims the job controller creates", () => {
    const queue = queueFixture({
      cache: [{ name: "gomod", size: "20Gi", mountPath: "/cache/gomod", scope: "Pipeline" }],
    });
    const web = { ...job, spec: { ...job.spec, pipelineSlug: "web" } };
    const pod = buildPod(queue, web, 2);
    const claimName = desiredCacheClaims(queue, web, 2)[0]?.metadata?.name;
    expect(claimName).to.match(/^bkq-linux-gomod-[0-9a-f]{20}-2$/);
    expect(pod.spec?.volumes).to.deep.include({ name: "cache-gomod", persistentVolumeClaim: { claimName } });
    expect(containerOf(pod, "command").volumeMounts).to.deep.include({
      name: "cache-gomod",
      mountPath: "/cache/gomod",
    });
    const deploy = buildPod(queue, { ...job, spec: { ...job.spec, pipelineSlug: "deploy" } }, 2);
    expect(deploy.spec?.volumes?.find((v) => v.name === "cache-gomod")?.persistentVolumeClaim?.claimName).to.not.equal(
      claimName,
    );
  });

  it("applies the queue's pod template without letting it override operator labels", () => {
    const pod = buildPod(
      queueFixture({
        podTemplate: {
          labels: { team: "infra", "buildkite.com/queue": "spoofed" },
          annotations: { note: "x" },
          env: [{ name: "FOO", value: "bar" }],
          tolerations: [{ key: "ci", operator: "Exists", effect: "NoSchedule" }],
          priorityClassName: "ci-low",
          runtimeClassName: "gvisor",
          imagePullSecrets: [{ name: "regcred" }],
        },
      }),
      job,
    );
    expect(pod.metadata?.labels).to.include({ team: "infra", "buildkite.com/queue": "linux" });
    expect(pod.metadata?.annotations).to.include({ note: "x" });
    expect(envOf(pod, "command").FOO).to.equal("bar");
    expect(envOf(pod)).to.not.have.property("FOO");
    expect(pod.spec).to.deep.include({
      priorityClassName: "ci-low",
      runtimeClassName: "gvisor",
      imagePullSecrets: [{ name: "regcred" }],
    });
    expect(pod.spec?.tolerations).to.deep.equal([{ key: "ci", operator: "Exists", effect: "NoSchedule" }]);
  });
});
