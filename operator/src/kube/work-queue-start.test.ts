import { expect } from "chai";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { WorkQueue } from "./work-queue.js";

// Beside work-queue.test.ts, which is at its length limit.
describe("WorkQueue startProblem", () => {
  it("starts no reconcile while it says why not: the key fails with that error and backs off, then runs", async () => {
    const clock = new FakeClock();
    let problem: Error | undefined = new Error("not the leader");
    const refused = problem;
    const done: unknown[] = [];
    const calls: string[] = [];
    const queue = new WorkQueue({
      name: "test",
      clock,
      baseDelayMs: 10,
      startProblem: () => problem,
      onDone: ({ error }) => done.push(error),
    });
    queue.start(2, (key) => {
      calls.push(key);
      return Promise.resolve(undefined);
    });
    try {
      queue.add("a");
      await queue.idle();
      expect(calls, "reconciles started").to.deep.equal([]);
      expect(done).to.deep.equal([refused]);
      problem = undefined;
      clock.advance(10);
      await queue.idle();
      expect(calls).to.deep.equal(["a"]);
      expect(done).to.deep.equal([refused, undefined]);
    } finally {
      await queue.shutdown();
    }
  });
});
