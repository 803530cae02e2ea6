import { expect } from "chai";
import { queueFixture } from "../../../test/support/fixtures.js";
import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteQueueSpec } from "../api/generated/buildkite-queue.js";
import { BuildkiteApiError } from "../buildkite/errors.js";
import { FakeClock } from "../../../test/support/fake-clock.js";
import type { KubeClients } from "../kube/resources.js";
import { JobTokens } from "./job-tokens.js";

/** A stack whose job-token endpoint answers from a script: a refusal (404) or tokens for every uuid but `withhold`. */
function stack(answer: { refuse?: boolean; withhold?: string[] }) {
  const calls: string[][] = [];
  return {
    calls,
    key: "bk-op-ci-linux",
    client: {
      issueJobTokens: (_key: string, uuids: string[]) => {
        calls.push(uuids);
        if (answer.refuse === true)
          return Promise.reject(
            new BuildkiteApiError({ endpoint: "job-acquisition-tokens", status: 404, serverMessage: "Not Found" }),
          );
        const issued = uuids.filter((u) => !(answer.withhold ?? []).includes(u));
        return Promise.resolve({
          tokens: new Map(issued.map((u) => [u, { token: `bkjat_${u}`, expiresAt: "" }])),
          notIssued: uuids.filter((u) => !issued.includes(u)),
        });
      },
    },
  };
}

describe("JobTokens", () => {
  const setup = (jobTokens: BuildkiteQueueSpec["jobTokens"]) => {
    const clock = new FakeClock();
    const conditions: ConditionUpdate[] = [];
    // Only `store` writes to Kubernetes; these tests never reach it.
    const tokens = new JobTokens({ clock, clients: {} as KubeClients }, 60_000, (c) => {
      conditions.push(c);
    });
    return { clock, conditions, tokens, queue: queueFixture({ jobTokens }) };
  };

  it("with Required, reserves nothing while Buildkite refuses job tokens, and asks again after the probe interval", async () => {
    const { clock, conditions, tokens, queue } = setup("Required");
    const refusing = stack({ refuse: true });
    expect(await tokens.modeFor(queue, refusing, "job-1")).to.equal("none");
    expect(conditions.at(-1)).to.include({ type: "JobTokens", status: "False", reason: "JobTokensRefused" });
    expect(await tokens.modeFor(queue, refusing, "job-1"), "within the interval, without asking").to.equal("none");
    expect(refusing.calls).to.have.length(1);
    clock.advance(60_000);
    const issuing = stack({});
    expect(await tokens.modeFor(queue, issuing, "job-1")).to.equal("job");
    expect(await tokens.modeFor(queue, issuing, "job-2"), "known to work: no second probe").to.equal("job");
    expect(issuing.calls).to.deep.equal([["job-1"]]);
  });

  it("never hands a pod the cluster token for a job Buildkite did not issue a token for, unless the queue opted in", async () => {
    const { tokens, queue } = setup("Required");
    const partial = await tokens.issue(queue, stack({ withhold: ["odd"] }), ["a", "odd"]);
    expect(partial).to.deep.equal(new Map([["a", "bkjat_a"]]));
    expect(await tokens.issue(queue, stack({ refuse: true }), ["b"]), "Required and refused").to.deep.equal(new Map());
    expect(await tokens.modeFor(queue, stack({}), "b"), "Required and refused: take nothing").to.equal("none");

    const preferred = setup("Preferred");
    expect(
      await preferred.tokens.modeFor(preferred.queue, stack({ withhold: ["odd"] }), "odd"),
      "Preferred, one job not issued",
    ).to.equal("job");
    const fallback = setup("Preferred");
    expect(
      await fallback.tokens.modeFor(fallback.queue, stack({ refuse: true }), "c"),
      "Preferred, refused for the queue",
    ).to.equal("agent");
    expect(fallback.conditions.at(-1)).to.include({ reason: "FallbackToAgentToken" });
    const disabled = setup("Disabled");
    expect(await disabled.tokens.modeFor(disabled.queue, stack({}), "d")).to.equal("agent");
  });
});
