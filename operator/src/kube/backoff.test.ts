import { expect } from "chai";
import { backoffDelayMs } from "./backoff.js";

describe("backoffDelayMs", () => {
  it("doubles from the base and stops at the maximum", () => {
    expect([1, 2, 3, 4, 5, 9, 10].map((n) => backoffDelayMs(n, 1_000, 300_000))).to.deep.equal([
      1_000, 2_000, 4_000, 8_000, 16_000, 256_000, 300_000,
    ]);
  });

  it("never overflows or reaches zero", () => {
    expect(backoffDelayMs(10_000, 1_000, 300_000)).to.equal(300_000);
    expect(backoffDelayMs(0, 1_000, 300_000)).to.equal(1_000);
    expect(backoffDelayMs(1, 0, 300_000)).to.equal(1);
  });
});
