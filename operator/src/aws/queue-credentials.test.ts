import { expect } from "chai";
import { Writable } from "node:stream";
import { queueFixture } from "../../../test/support/fixtures.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { FakeClock } from "../../../test/support/fake-clock.js";
import { createLogger } from "../observability/logger.js";
import type { CheckOutcome } from "./outcome.js";
import { QueueCredentials } from "./queue-credentials.js";

const AWS = {
  roleArn: "arn:aws:iam::123456789012:role/ci",
  region: "eu-west-1",
  audience: "sts.amazonaws.com",
  tokenExpirationSeconds: 3600,
};
const ASSUMED: CheckOutcome = {
  kind: "assumed",
  assumedRoleArn: "arn:aws:sts::123456789012:assumed-role/ci/s",
  expiration: undefined,
  issuer: undefined,
};
const DOWN: CheckOutcome = { kind: "unavailable", code: "ECONNREFUSED", detail: "refused", issuer: undefined };

/** A copy of `q` as the API server serves it after a spec change. */
function nextGeneration(q: BuildkiteQueue): BuildkiteQueue {
  const next = structuredClone(q);
  next.metadata.generation = (q.metadata.generation ?? 0) + 1;
  return next;
}

/** Lets the promise callbacks queued by a fired timer run (no time passes). */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** The scheduling of one queue's checks, driven by a fake clock and a scripted check (no network, no cluster). */
describe("QueueCredentials", () => {
  let clock: FakeClock;
  let queue: BuildkiteQueue;
  let checks: { at: number; resolve: (o: CheckOutcome) => void }[];
  let events: { type: string; reason: string }[];
  let changes: number;
  let gauge: (boolean | undefined)[];
  let subject: QueueCredentials;

  /** Answers the check in flight with `outcome` and lets the checker react. */
  async function answer(outcome: CheckOutcome): Promise<void> {
    const pending = checks.at(-1);
    if (!pending) throw new Error("no check in flight");
    pending.resolve(outcome);
    await settle();
  }
  /** Advances the clock by `ms` and lets a check started meanwhile begin. */
  async function advance(ms: number): Promise<void> {
    clock.advance(ms);
    await settle();
  }

  beforeEach(async () => {
    clock = new FakeClock();
    queue = queueFixture({ aws: AWS });
    checks = [];
    events = [];
    changes = 0;
    gauge = [];
    subject = new QueueCredentials("ci/linux", queue.metadata.uid ?? "", queue, {
      clock,
      logger: createLogger(
        "error",
        new Writable({
          write: (_c, _e, done) => {
            done();
          },
        }),
      ),
      recorder: {
        record: (_t, type, reason) => {
          events.push({ type, reason });
        },
      },
      metrics: {
        credentials: (_q, ready) => {
          gauge.push(ready);
        },
      },
      settings: { recheckIntervalMs: 300_000, maxBackoffMs: 8_000 },
      current: () => queue,
      check: () =>
        new Promise((resolve) => {
          checks.push({ at: clock.nowMs(), resolve });
        }),
      target: (q) => ({
        namespace: "ci",
        name: "linux",
        serviceAccount: "bkq-linux",
        roleArn: q.spec.aws?.roleArn ?? "",
        region: "eu-west-1",
        audience: "sts.amazonaws.com",
        endpoint: "http://sts",
      }),
      onChange: () => {
        changes++;
      },
    });
    subject.start();
    await advance(0);
  });
  afterEach(async () => {
    await subject.stop();
  });

  it("checks at once, shows Checking until the answer, then re-checks after the interval", async () => {
    expect(checks).to.have.length(1);
    expect(subject.current()).to.include({ status: "Unknown", reason: "Checking" });
    await answer(ASSUMED);
    expect(subject.current()).to.include({ status: "True", reason: "RoleAssumed" });
    await advance(299_999);
    expect(checks).to.have.length(1);
    await advance(1);
    expect(checks).to.have.length(2);
  });

  it("backs off while STS is unreachable, up to the maximum, and starts over after a success", async () => {
    const start = clock.nowMs();
    for (const delay of [1_000, 2_000, 4_000, 8_000, 8_000]) {
      await answer(DOWN);
      const count = checks.length;
      await advance(delay - 1);
      expect(checks, "no retry before the delay is up").to.have.length(count);
      await advance(1);
      expect(checks).to.have.length(count + 1);
    }
    expect(checks.map((c) => c.at - start)).to.deep.equal([0, 1_000, 3_000, 7_000, 15_000, 23_000]);
    expect(subject.current()).to.include({ status: "Unknown", reason: "StsUnavailable" });
    await answer(ASSUMED);
    await advance(300_000);
    await answer(DOWN);
    const before = checks.length;
    await advance(1_000);
    expect(checks).to.have.length(before + 1);
  });

  it("records an Event and asks for a status write on each change of status or reason, never for Checking", async () => {
    await answer(DOWN);
    await advance(1_000);
    await answer(DOWN);
    await advance(2_000);
    await answer(ASSUMED);
    await advance(300_000);
    await answer(ASSUMED);
    expect(events).to.deep.equal([
      { type: "Warning", reason: "StsUnavailable" },
      { type: "Normal", reason: "RoleAssumed" },
    ]);
    // the StsUnavailable message names the next retry, so each attempt rewrites it; the same success does not
    expect(changes).to.equal(3);
    expect(gauge).to.deep.equal([false, false, true]);
  });

  it("re-checks at once when spec.aws changes, dropping the answer to the check in flight", async () => {
    queue = nextGeneration(queue);
    queue.spec.aws = { ...AWS, roleArn: "arn:aws:iam::123456789012:role/other" };
    subject.update(queue);
    expect(subject.current()).to.include({ status: "Unknown", reason: "Checking" });
    expect(subject.current().message).to.include("role/other");
    await answer(ASSUMED);
    expect(subject.current()).to.include({ reason: "Checking" });
    await advance(0);
    expect(checks).to.have.length(2);
    await answer({ kind: "refused", code: "AccessDenied", message: "Not authorized", issuer: undefined });
    expect(subject.current()).to.include({ status: "False", reason: "AccessDenied" });
  });

  it("re-checks at once on a new generation, keeping the last answer meanwhile; ignores status-only updates", async () => {
    await answer(ASSUMED);
    subject.update({ ...queue, status: { active: 3 } });
    await advance(0);
    expect(checks).to.have.length(1);
    queue = nextGeneration(queue);
    subject.update(queue);
    await advance(0);
    expect(checks).to.have.length(2);
    expect(subject.current()).to.include({ status: "True" });
  });

  it("leaves no timer behind once stopped", async () => {
    await answer(DOWN);
    await subject.stop();
    expect(clock.pending).to.equal(0);
  });
});
