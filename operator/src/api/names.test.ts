import { expect } from "chai";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import { cacheClaimName, cacheScope } from "./names.js";

const jobOf = (pipelineSlug?: string, branch?: string) => {
  const j = jobFixture();
  j.spec = {
    ...j.spec,
    ...(pipelineSlug !== undefined ? { pipelineSlug } : {}),
    ...(branch !== undefined ? { branch } : {}),
  };
  return j;
};
const pipelineCache = { name: "gomod", scope: "Pipeline" } as const;
const branchCache = { name: "gomod", scope: "Branch" } as const;

describe("cache scopes and claim names", () => {
  it("keys a Pipeline scope by the pipeline alone and a Branch scope by pipeline and branch, as 20 hex digits", () => {
    const queue = queueFixture();
    const web = cacheScope(queue, pipelineCache, jobOf("web", "main"));
    expect(web.key).to.match(/^[0-9a-f]{20}$/);
    expect(web).to.deep.equal({ key: web.key, pipeline: "web" });
    expect(cacheScope(queue, pipelineCache, jobOf("web", "pr-7")).key).to.equal(web.key);
    expect(cacheScope(queue, pipelineCache, jobOf("deploy", "main")).key).to.not.equal(web.key);
    const main = cacheScope(queue, branchCache, jobOf("web", "main"));
    expect(main).to.deep.equal({ key: main.key, pipeline: "web", branch: "main" });
    expect(cacheScope(queue, branchCache, jobOf("web", "pr-7")).key).to.not.equal(main.key);
    expect(main.key).to.not.equal(web.key);
  });

  it("never lets a pipeline and branch name run together into another's (the parts are kept apart)", () => {
    const queue = queueFixture();
    expect(cacheScope(queue, branchCache, jobOf("web-", "main")).key).to.not.equal(
      cacheScope(queue, branchCache, jobOf("web", "-main")).key,
    );
    expect(cacheScope(queue, branchCache, jobOf(undefined, undefined)).key).to.not.equal(
      cacheScope(queue, pipelineCache, jobOf(undefined, undefined)).key,
    );
  });

  it("names a claim bkq-<queue>-<cache>-<scope>-<slot>, and keeps queues whose names join alike apart", () => {
    const job = jobOf("web");
    const ab = queueFixture({}, "a-b");
    const a = queueFixture({}, "a");
    const first = cacheClaimName(ab, "c", cacheScope(ab, { name: "c", scope: "Pipeline" }, job), 0);
    const second = cacheClaimName(a, "b-c", cacheScope(a, { name: "b-c", scope: "Pipeline" }, job), 0);
    expect(first).to.match(/^bkq-a-b-c-[0-9a-f]{20}-0$/);
    expect(first).to.not.equal(second);
  });
});
