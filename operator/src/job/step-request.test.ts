import { expect } from "chai";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueueSpec } from "../api/generated/buildkite-queue.js";
import { decideStep, imageAllowed } from "./step-request.js";

const withStep = (step: NonNullable<BuildkiteJob["spec"]["step"]>): BuildkiteJob => {
  const job = jobFixture();
  return { ...job, spec: { ...job.spec, step } };
};
const refusal = (step: NonNullable<BuildkiteJob["spec"]["step"]>, spec: Partial<BuildkiteQueueSpec> = {}): string => {
  const decision = decideStep(queueFixture(spec), withStep(step));
  if (!("refused" in decision)) throw new Error("expected a refusal");
  return decision.refused;
};
const plan = (step: NonNullable<BuildkiteJob["spec"]["step"]>, spec: Partial<BuildkiteQueueSpec> = {}) => {
  const decision = decideStep(queueFixture(spec), withStep(step));
  if ("refused" in decision) throw new Error(decision.refused);
  return decision.plan;
};

describe("decideStep: what a step may ask of its pod is the queue's decision", () => {
  it("matches images against allowedImages patterns (default: any)", () => {
    expect(imageAllowed(undefined, "anything:1")).to.equal(true);
    expect(imageAllowed(["registry.example.com/ci/*"], "registry.example.com/ci/node:22")).to.equal(true);
    expect(imageAllowed(["registry.example.com/ci/*"], "registry.example.com/other/node:22")).to.equal(false);
    expect(imageAllowed(["debian:12"], "debian:12.1")).to.equal(false);
    expect(imageAllowed(["a.b/*"], "aXb/c")).to.equal(false);
  });

  it("refuses an image outside the queue's patterns, naming the setting and the image", () => {
    const message = refusal({ image: "evil/miner:1" }, { steps: { allowSidecars: true, allowedImages: ["ci/*"] } });
    expect(message).to.include("evil/miner:1").and.include("spec.steps.allowedImages").and.include("ci/*");
    expect(plan({ image: "ci/node:22" }, { steps: { allowSidecars: true, allowedImages: ["ci/*"] } }).image).to.equal(
      "ci/node:22",
    );
  });

  it("refuses the plugin keys that would let a pipeline shape the pod, saying what to use instead", () => {
    expect(refusal({ kubernetes: { podSpecPatch: { serviceAccountName: "admin" } } }))
      .to.include("podSpecPatch")
      .and.include("image:");
    expect(refusal({ kubernetes: { gitEnvFrom: [] } })).to.include("spec.checkout");
    expect(refusal({ kubernetes: { hostPath: "/" } }))
      .to.include("hostPath")
      .and.include("accepts sidecars");
    expect(refusal({ kubernetes: { checkout: { cloneFlags: "--depth=1" } } })).to.include("checkout accepts only skip");
  });

  it("refuses sidecars when the queue does not allow them, and sidecars that set security or mounts", () => {
    expect(refusal({ kubernetes: { sidecars: [{ image: "redis" }] } }, { steps: { allowSidecars: false } })).to.include(
      "spec.steps.allowSidecars",
    );
    expect(
      refusal({ kubernetes: { sidecars: [{ image: "redis", securityContext: { privileged: true } }] } }),
    ).to.include("securityContext");
    expect(refusal({ kubernetes: { sidecars: [{ image: "redis", volumeMounts: [] }] } })).to.include("volumeMounts");
    expect(refusal({ kubernetes: { sidecars: [{ name: "agent", image: "redis" }] } })).to.include(
      "DNS label other than agent",
    );
    expect(
      refusal({
        kubernetes: { sidecars: [{ image: "redis", readinessProbe: { httpGet: { host: "192.0.2.1", port: 80 } } }] },
      }),
    ).to.include("host is not allowed");
    expect(
      refusal(
        { kubernetes: { sidecars: [{ image: "evil/x" }] } },
        { steps: { allowSidecars: true, allowedImages: ["ci/*"] } },
      ),
    ).to.include("sidecars[0].image");
  });

  it("lets a step read only the Secrets its queue allows, and never set the operator's variables", () => {
    const secretEnv = {
      kubernetes: { env: [{ name: "TOKEN", valueFrom: { secretKeyRef: { name: "deploy", key: "t" } } }] },
    };
    expect(refusal(secretEnv)).to.include("Secret deploy").and.include("spec.steps.allowedSecrets");
    expect(plan(secretEnv, { steps: { allowSidecars: true, allowedSecrets: ["deploy"] } }).env).to.deep.equal([
      { name: "TOKEN", valueFrom: { secretKeyRef: { name: "deploy", key: "t" } } },
    ]);
    expect(refusal({ kubernetes: { envFrom: [{ secretRef: { name: "prod" } }] } })).to.include("Secret prod");
    expect(refusal({ kubernetes: { envFrom: [{ configMapRef: { name: "x" } }] } })).to.include("secretRef");
    expect(refusal({ kubernetes: { env: [{ name: "BUILDKITE_AGENT_TOKEN", value: "x" }] } })).to.include("may not set");
    expect(refusal({ kubernetes: { env: [{ name: "AWS_ROLE_ARN", value: "x" }] } })).to.include("may not set");
  });

  it("keeps the command's resources within the shape, leaving room for the agent, checkout and sidecars", () => {
    const spec = { instanceShape: "LINUX_AMD64_2X4" } as const;
    expect(plan({ kubernetes: { resources: { limits: { memory: "2Gi" } } } }, spec).resources).to.deep.equal({
      requests: { cpu: 1800, memory: 2 * 2 ** 30 },
      limits: { cpu: 2000, memory: 2 * 2 ** 30 },
    });
    expect(refusal({ kubernetes: { resources: { limits: { cpu: "3" } } } }, spec)).to.include("LINUX_AMD64_2X4");
    expect(refusal({ kubernetes: { resources: { requests: { cpu: "2" } } } }, spec)).to.include("at most 1800m");
    expect(refusal({ kubernetes: { resources: { limits: { gpu: "1" } } } }, spec)).to.include("only cpu and memory");
    expect(
      refusal({ kubernetes: { sidecars: [{ image: "big", resources: { requests: { memory: "4Gi" } } }] } }, spec),
    ).to.include("the command needs at least");
  });

  it("refuses a step whose plugins could not be read, with the reason", () => {
    expect(refusal({ error: "BUILDKITE_PLUGINS is not JSON" })).to.include("BUILDKITE_PLUGINS is not JSON");
  });
});
