import { expect } from "chai";
import { armFaults, faultPoint, type FaultPoint } from "./fault-points.js";

describe("fault points", () => {
  afterEach(() => {
    armFaults(undefined);
  });

  it("do nothing unless armed", () => {
    const hit: FaultPoint[] = [];
    armFaults("", (p) => hit.push(p));
    faultPoint("after-reserve");
    expect(hit).to.deep.equal([]);
  });

  it("fire the Nth time a point is reached, once", () => {
    const hit: FaultPoint[] = [];
    armFaults("after-reserve@2, after-pod-create", (p) => hit.push(p));
    faultPoint("after-reserve");
    expect(hit).to.deep.equal([]);
    faultPoint("after-reserve");
    faultPoint("after-reserve");
    faultPoint("after-pod-create");
    expect(hit).to.deep.equal(["after-reserve", "after-pod-create"]);
  });

  it("refuse an unknown point or count, saying which are known", () => {
    expect(() => {
      armFaults("after-lunch");
    }).to.throw(/unknown fault point "after-lunch"; known: after-create-jobs/);
    expect(() => {
      armFaults("after-reserve@0");
    }).to.throw(/whole number/);
  });
});
