import { expect } from "chai";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { EXPECTATION_TTL_MS, Expectations, type Expected } from "./expectations.js";

const never = (): boolean => false;
const entries = (e: Expectations, owner: string, seen: (key: string, expected: Expected) => boolean = never) =>
  Object.fromEntries(e.pending(owner, seen));

describe("Expectations", () => {
  let clock: FakeClock;
  let e: Expectations;
  beforeEach(() => {
    clock = new FakeClock();
    e = new Expectations(clock);
  });

  it("keeps what was created or assigned, per owner, until the caches show it", () => {
    e.created("ci/linux", "ci/bkj-a");
    e.assigned("ci/linux", "ci/bkj-b", 2);
    e.created("ci/arm", "ci/bkj-c");
    expect(entries(e, "ci/linux")).to.deep.equal({
      "ci/bkj-a": { kind: "created" },
      "ci/bkj-b": { kind: "assigned", slot: 2 },
    });
    // The reader says which ones its caches show: those are dropped for good.
    expect(entries(e, "ci/linux", (key) => key === "ci/bkj-a")).to.deep.equal({
      "ci/bkj-b": { kind: "assigned", slot: 2 },
    });
    expect(entries(e, "ci/linux")).to.deep.equal({ "ci/bkj-b": { kind: "assigned", slot: 2 } });
    expect(e.has("ci/linux", "ci/bkj-a")).to.equal(false);
    expect(entries(e, "ci/arm")).to.deep.equal({ "ci/bkj-c": { kind: "created" } });
  });

  it("hands the reader what was expected, so it can tell a created object from a slot", () => {
    e.created("q", "ns/a");
    e.assigned("q", "ns/b", 0);
    const asked: [string, Expected][] = [];
    e.pending("q", (key, expected) => {
      asked.push([key, expected]);
      return false;
    });
    expect(asked).to.deep.equal([
      ["ns/a", { kind: "created" }],
      ["ns/b", { kind: "assigned", slot: 0 }],
    ]);
  });

  it("drops an entry after the TTL even if the caches never show it", () => {
    e.assigned("q", "ns/a", 1);
    clock.advance(EXPECTATION_TTL_MS);
    expect(e.has("q", "ns/a")).to.equal(true);
    e.created("q", "ns/b");
    clock.advance(1);
    expect(e.has("q", "ns/a")).to.equal(false);
    expect(entries(e, "q")).to.deep.equal({ "ns/b": { kind: "created" } });
  });

  it("replaces what was expected of an object, and restarts its TTL", () => {
    e.created("q", "ns/a");
    clock.advance(EXPECTATION_TTL_MS - 10);
    e.assigned("q", "ns/a", 3);
    clock.advance(100);
    expect(entries(e, "q")).to.deep.equal({ "ns/a": { kind: "assigned", slot: 3 } });
  });

  it("forgets an object by its key alone (a deleted object's owner is not known any more)", () => {
    e.assigned("q", "ns/a", 0);
    e.assigned("q", "ns/b", 1);
    e.forget("ns/a");
    e.forget("ns/unknown");
    expect(entries(e, "q")).to.deep.equal({ "ns/b": { kind: "assigned", slot: 1 } });
  });

  it("moves an object recorded under another owner", () => {
    e.assigned("q1", "ns/a", 0);
    e.assigned("q2", "ns/a", 4);
    expect(entries(e, "q1")).to.deep.equal({});
    expect(entries(e, "q2")).to.deep.equal({ "ns/a": { kind: "assigned", slot: 4 } });
    e.forget("ns/a");
    expect(entries(e, "q2")).to.deep.equal({});
  });

  it("takes a shorter TTL when given one", () => {
    const short = new Expectations(clock, 1_000);
    short.created("q", "ns/a");
    clock.advance(1_001);
    expect(entries(short, "q")).to.deep.equal({});
  });

  it("keeps a slot handed out before the create's own answer arrived (the watch was faster)", () => {
    const expectations = new Expectations(new FakeClock());
    expectations.assigned("ci/linux", "ci/bkj-a", 2);
    expectations.created("ci/linux", "ci/bkj-a");
    expect(expectations.pending("ci/linux", () => false).get("ci/bkj-a")).to.deep.equal({ kind: "assigned", slot: 2 });
  });

  it("knows a job it created and has not changed since, by uid: a job of the same name made anew is not it", () => {
    e.jobCreated("ci/bkj-a", "uid-1");
    expect(e.unchangedSinceCreated("ci/bkj-a", "uid-1")).to.equal(true);
    expect(e.unchangedSinceCreated("ci/bkj-a", "uid-2")).to.equal(false);
    expect(e.unchangedSinceCreated("ci/bkj-b", "uid-1")).to.equal(false);
    expect(e.unchangedSinceCreated("ci/bkj-a", undefined)).to.equal(false);
    e.jobChanged("ci/bkj-a");
    expect(e.unchangedSinceCreated("ci/bkj-a", "uid-1")).to.equal(false);
  });
});
