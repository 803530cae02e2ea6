import { expect } from "chai";
import { stepOf } from "./step-source.js";

const details = (env: Record<string, string>, command = "") => ({ id: "j", command, env });
const PLUGIN = "github.com/buildkite-plugins/kubernetes-buildkite-plugin";

describe("stepOf: what a step asks of its pod, read from get-job", () => {
  it("records the step's command, which the command container runs, and refuses one too long to record", () => {
    expect(stepOf(details({}, "make test"))).to.deep.equal({ command: "make test" });
    expect(stepOf(details({}, "x".repeat(70_000))).error).to.match(/longer than 65536/);
  });

  it("reads the step's image and its kubernetes plugin, and nothing when it asks for nothing", () => {
    expect(stepOf(details({}))).to.deep.equal({});
    expect(stepOf(details({ BUILDKITE_PLUGINS: "[]", BUILDKITE_IMAGE: "" }))).to.deep.equal({});
    const plugins = JSON.stringify([
      { "github.com/buildkite-plugins/docker-buildkite-plugin#v5": { image: "x" } },
      { [PLUGIN]: { sidecars: [{ image: "redis:7" }] } },
    ]);
    expect(stepOf(details({ BUILDKITE_IMAGE: "node:22", BUILDKITE_PLUGINS: plugins }))).to.deep.equal({
      image: "node:22",
      kubernetes: { sidecars: [{ image: "redis:7" }] },
    });
    expect(stepOf(details({ BUILDKITE_PLUGINS: JSON.stringify([{ kubernetes: { env: [] } }]) }))).to.deep.equal({
      kubernetes: { env: [] },
    });
  });

  it("records what cannot be read as an error, so the job fails with it rather than running without it", () => {
    expect(stepOf(details({ BUILDKITE_PLUGINS: "{not json" })).error).to.match(/not JSON/);
    expect(stepOf(details({ BUILDKITE_PLUGINS: "{}" })).error).to.match(/not a JSON list/);
    const twice = JSON.stringify([{ [PLUGIN]: {} }, { kubernetes: {} }]);
    expect(stepOf(details({ BUILDKITE_PLUGINS: twice })).error).to.match(/more than once/);
    expect(stepOf(details({ BUILDKITE_PLUGINS: JSON.stringify([{ [PLUGIN]: "x" }]) })).error).to.match(/must be a map/);
    const huge = JSON.stringify([{ [PLUGIN]: { env: [{ name: "A", value: "x".repeat(40_000) }] } }]);
    expect(stepOf(details({ BUILDKITE_PLUGINS: huge })).error).to.match(/larger than/);
  });
});
