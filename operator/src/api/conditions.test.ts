import { expect } from "chai";
import { findCondition, setCondition } from "./conditions.js";

describe("setCondition", () => {
  const t0 = new Date("2026-01-01T00:00:00Z");
  const t1 = new Date("2026-01-01T00:05:00Z");
  it("adds a condition with the current time and generation", () => {
    const list = setCondition([], { type: "Ready", status: "True", reason: "Ok", message: "fine" }, 3, t0);
    expect(list).to.deep.equal([
      {
        type: "Ready",
        status: "True",
        reason: "Ok",
        message: "fine",
        observedGeneration: 3,
        lastTransitionTime: t0.toISOString(),
      },
    ]);
  });
  it("keeps the transition time while the status holds, and moves it when the status flips", () => {
    const first = setCondition([], { type: "Ready", status: "True", reason: "Ok", message: "fine" }, 1, t0);
    const same = setCondition(first, { type: "Ready", status: "True", reason: "Ok", message: "still fine" }, 2, t1);
    expect(findCondition(same, "Ready")?.lastTransitionTime).to.equal(t0.toISOString());
    expect(findCondition(same, "Ready")?.message).to.equal("still fine");
    const flipped = setCondition(same, { type: "Ready", status: "False", reason: "Broken", message: "no" }, 2, t1);
    expect(findCondition(flipped, "Ready")?.lastTransitionTime).to.equal(t1.toISOString());
    expect(flipped).to.have.length(1);
  });
});
