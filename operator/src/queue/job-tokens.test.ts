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
        if (answer.refuse === true) return Promise.reject(new BuildkiteApiError({ endpoint: "job-acquisition-tokens", status: 404, serverMessage: "Not Found" }));
        const issued = uuids.filter((u) => !(answer.withhold ?? []).includes(u));
        return Promise.resolve({ tokens: new Map(issued.map((u) => [u, { token: `bkjat_${u}`, expiresAt: "" }])), notIssued: uuids.filter((u) => !issued.includes(u)) });
      },
    },
  };
}

describe("JobTokens", () => {
  const setup = (jobTokens: BuildkiteQueueSpec["jobTokens"]) => {
    const clock = new FakeClock();
    const conditions: ConditionUpdate[] = [];
    // Only `store` writes to Kubernetes; these tests never reach it.
    const tokens = new JobTokens({ clock, clients: {} as KubeClients }, 60_000, (c) => { conditions.push(c); });
    return { clock, conditions, tokens, queue: queueFixture({ jobTokens }) };
  };

  it("with Required, reserves nothing while Buildkite refuses job tokens, and asks again after the probe interval", async () => {
    const { clock, conditions, tokens, queue } = setup("Required");
    const refusing = stack({ refuse: true });
    expect(await tokens.mayReserve(queue, refusing, "job-1")).to.equal(false);
    expect(conditions.at(-1)).to.include({ type: "JobTokens", status: "False", reason: "JobTokensRefused" });
    expect(await tokens.mayReserve(queue, refusing, "job-1"), "within the interval, without asking").to.equal(false);
    expect(refusing.calls).to.have.length(1);
    clock.advance(60_000);
    const issuing = stack({});
    expect(await tokens.mayReserve(queue, issuing, "job-1")).to.equal(true);
    expect(await tokens.mayReserve(queue, issuing, "job-2"), "known to work: no second probe").to.equal(true);
    expect(issuing.calls).to.deep.equal([["job-1"]]);
  });

  it("never hands a pod the cluster token for a job Buildkite did not issue a token for, unless the queue opted in", async () => {
    const { tokens, queue } = setup("Required");
    const partial = await tokens.issue(queue, stack({ withhold: ["odd"] }), ["a", "odd"]);
    expect(partial).to.deep.equal({ tokens: new Map([["a", "bkjat_a"]]), agentToken: false });
    const refused = await tokens.issue(queue, stack({ refuse: true }), ["b"]);
    expect(refused.agentToken, "Required and refused").to.equal(false);

    const preferred = setup("Preferred");
    expect((await preferred.tokens.issue(preferred.queue, stack({ withhold: ["odd"] }), ["odd"])).agentToken, "Preferred, one job not issued").to.equal(false);
    expect((await preferred.tokens.issue(preferred.queue, stack({ refuse: true }), ["c"])).agentToken, "Preferred, refused for the queue").to.equal(true);
    expect(preferred.conditions.at(-1)).to.include({ reason: "FallbackToAgentToken" });
    const disabled = setup("Disabled");
    expect((await disabled.tokens.issue(disabled.queue, stack({}), ["d"])).agentToken).to.equal(true);
  });
});
