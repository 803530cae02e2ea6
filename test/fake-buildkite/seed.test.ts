import { expect } from "chai";
import { HttpError } from "./http.js";
import { expandPlugins, KUBERNETES_PLUGIN, pluginLocation } from "./plugins.js";
import { FAKE_REPO, parseSeedBody, seedJobRecord, type SeedJobOptions } from "./seed.js";

const ctx = { seq: 1, now: 0, queueKey: "q", organizationSlug: "fake-org" };
const env = (options: SeedJobOptions): Record<string, string> => seedJobRecord(options, ctx).env;

describe("fake Buildkite seeded jobs", () => {
  it("skips the checkout of the fake's own repository only: a real repo is checked out", () => {
    expect(env({})).to.include({ BUILDKITE_REPO: FAKE_REPO, BUILDKITE_SKIP_CHECKOUT: "true" });
    expect(env({ repo: "file:///tmp/repo" })).to.include({ BUILDKITE_REPO: "file:///tmp/repo" });
    expect(env({ repo: "file:///tmp/repo" })).to.not.have.property("BUILDKITE_SKIP_CHECKOUT");
    expect(env({ env: { BUILDKITE_REPO: "https://example.test/r.git" } })).to.not.have.property(
      "BUILDKITE_SKIP_CHECKOUT",
    );
    expect(env({ env: { BUILDKITE_SKIP_CHECKOUT: "false" } })).to.include({ BUILDKITE_SKIP_CHECKOUT: "false" });
  });

  it("sets BUILDKITE_IMAGE from the step's image and BUILDKITE_PLUGINS from its plugins", () => {
    expect(env({})).to.include({ BUILDKITE_PLUGINS: "[]" }).and.not.have.property("BUILDKITE_IMAGE");
    const plugins = [{ [KUBERNETES_PLUGIN]: { sidecars: [{ image: "redis:7" }] } }];
    const seeded = env({ image: "node:22", plugins });
    expect(seeded).to.include({ BUILDKITE_IMAGE: "node:22" });
    expect(JSON.parse(seeded.BUILDKITE_PLUGINS ?? "")).to.deep.equal(plugins);
  });

  it("reads image and plugins from a seed body, refusing plugins not in BUILDKITE_PLUGINS' form", () => {
    const plugins = [{ "github.com/buildkite-plugins/docker-buildkite-plugin#v5.12.0": { image: "node" } }];
    expect(parseSeedBody({ image: "node:22", plugins })).to.deep.equal({ image: "node:22", plugins });
    expect(parseSeedBody({ plugins: null })).to.deep.equal({});
    for (const bad of [{ docker: {} }, ["docker"], [{ a: 1, b: 2 }]])
      expect(() => parseSeedBody({ plugins: bad })).to.throw(HttpError, "plugins must be");
  });

  it("expands the pipeline's plugin shorthand as the pipeline upload does", () => {
    const sidecars = [{ image: "postgres:17" }];
    expect(expandPlugins([{ kubernetes: { sidecars } }])).to.deep.equal([{ [KUBERNETES_PLUGIN]: { sidecars } }]);
    expect(expandPlugins(["docker#v5.12.0", { "my-org/lint": null }])).to.deep.equal([
      { "github.com/buildkite-plugins/docker-buildkite-plugin#v5.12.0": null },
      { "github.com/my-org/lint-buildkite-plugin": null },
    ]);
    for (const kept of [
      "github.com/acme/x-buildkite-plugin#v1",
      "https://git.example.test/p.git#main",
      "ssh://git@example.test/p.git",
      "git@example.test:org/p.git",
      "file:///srv/plugins/p",
      "./.buildkite/plugins/local",
    ])
      expect(pluginLocation(kept)).to.equal(kept);
    expect(pluginLocation("acme/x-buildkite-plugin")).to.equal("github.com/acme/x-buildkite-plugin");
  });
});
