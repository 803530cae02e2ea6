import { expect } from "chai";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { BUSY_POLL_MS, DutySchedule, nextPollMs } from "./duty-schedule.js";
import { dutiesToRun } from "./job-source.js";

describe("DutySchedule", () => {
  it("backs a failing duty off on its own while another stays due every cycle", () => {
    const clock = new FakeClock();
    const duties = new DutySchedule<"dispatch" | "maintain">(clock, 1_000, 8_000);
    const start = clock.nowMs();
    const ranAt: Record<string, number[]> = { dispatch: [], maintain: [] };
    for (let cycle = 0; cycle < 20; cycle++) {
      if (duties.due("dispatch")) {
        ranAt.dispatch?.push(clock.nowMs() - start);
        duties.failed("dispatch");
      }
      if (duties.due("maintain")) {
        ranAt.maintain?.push(clock.nowMs() - start);
        duties.succeeded("maintain");
      }
      clock.advance(1_000);
    }
    expect(ranAt.maintain, "the healthy duty, every cycle").to.have.length(20);
    expect(ranAt.dispatch, "the failing duty, after 1, 2, 4, 8 s").to.deep.equal([0, 1_000, 3_000, 7_000, 15_000]);
  });

  it("runs a periodic duty once per period, and at once again after a success resets its backoff", () => {
    const clock = new FakeClock();
    const duties = new DutySchedule<"states">(clock, 1_000, 30_000);
    duties.succeeded("states", 5_000);
    clock.advance(4_999);
    expect(duties.due("states")).to.equal(false);
    clock.advance(1);
    expect(duties.due("states")).to.equal(true);
    expect(duties.failed("states")).to.equal(1_000);
    expect(duties.failed("states")).to.equal(2_000);
    duties.succeeded("states");
    expect(duties.due("states")).to.equal(true);
    expect(duties.failed("states"), "a success starts the backoff over").to.equal(1_000);
  });
});

describe("nextPollMs", () => {
  it("polls within the Stacks API's list limit while jobs wait, and at the configured interval when idle", () => {
    expect(nextPollMs(true, 1_000)).to.equal(BUSY_POLL_MS);
    expect(nextPollMs(false, 1_000)).to.equal(1_000);
    expect(nextPollMs(true, 100), "never slower than configured").to.equal(100);
    expect(1_000 / BUSY_POLL_MS, "list calls a second with two pages a poll").to.be.at.most(10 / 2);
  });
});

describe("dutiesToRun", () => {
  it("takes no job and marks none from a cache that may be stale, and takes none for a queue being deleted", () => {
    expect(dutiesToRun({ staleCache: false, deleting: false })).to.deep.equal([
      "dispatch",
      "maintain",
      "states",
      "report",
    ]);
    expect(
      dutiesToRun({ staleCache: true, deleting: false }),
      "stale: keep what is held, decide nothing new",
    ).to.deep.equal(["maintain", "report"]);
    expect(dutiesToRun({ staleCache: false, deleting: true })).to.deep.equal(["maintain", "states", "report"]);
    expect(dutiesToRun({ staleCache: true, deleting: true })).to.deep.equal(["maintain", "report"]);
  });
});
