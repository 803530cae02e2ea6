import { expect } from "chai";
import { JOB_STATES, TERMINAL_STATES, transition, type JobEvent, type JobState } from "./model.js";

/** [from, event, to or refusal status] rows of the §6.5 table. */
const TABLE: readonly (readonly [JobState, JobEvent, JobState | 422 | 423])[] = [
  ["scheduled", "reserve", "reserved"],
  ["reserved", "reserve", "reserved"],
  ["accepted", "reserve", 422],
  ["finished", "reserve", 422],
  ["reserved", "reservation_expired", "scheduled"],
  ["scheduled", "reservation_expired", 422],
  ["scheduled", "stack_finish", "finished"],
  ["reserved", "stack_finish", "finished"],
  ["running", "stack_finish", 422],
  ["finished", "stack_finish", 422],
  ["scheduled", "acquire", "accepted"],
  ["reserved", "acquire", "accepted"],
  ["waiting", "acquire", 423],
  ["blocked", "acquire", 423],
  ["limited", "acquire", 423],
  ["accepted", "acquire", 422],
  ["running", "acquire", 422],
  ["canceling", "acquire", 422],
  ["canceled", "acquire", 422],
  ["finished", "acquire", 422],
  ["scheduled", "dispatch", "assigned"],
  ["reserved", "dispatch", 422],
  ["assigned", "accept", "accepted"],
  ["scheduled", "accept", 422],
  ["accepted", "start", "running"],
  ["canceling", "start", "canceling"],
  ["running", "start", 422],
  ["scheduled", "cancel", "canceled"],
  ["reserved", "cancel", "canceled"],
  ["assigned", "cancel", "canceled"],
  ["waiting", "cancel", "canceled"],
  ["blocked", "cancel", "canceled"],
  ["accepted", "cancel", "canceling"],
  ["running", "cancel", "canceling"],
  ["finished", "cancel", 422],
  ["running", "timeout", "timing_out"],
  ["scheduled", "timeout", 422],
  ["running", "agent_finish", "finished"],
  ["accepted", "agent_finish", "finished"],
  ["canceling", "agent_finish", "canceled"],
  ["timing_out", "agent_finish", "timed_out"],
  ["finished", "agent_finish", 422],
  ["canceled", "agent_finish", 422],
  ["scheduled", "agent_finish", 422],
  ["scheduled", "expire", "expired"],
  ["running", "expire", 422],
  ["accepted", "agent_lost", "finished"],
  ["running", "agent_lost", "finished"],
  ["scheduled", "agent_lost", 422],
  ["waiting", "unlock", "scheduled"],
  ["blocked", "unlock", "scheduled"],
  ["scheduled", "unlock", 422],
];

describe("fake Buildkite job state machine", () => {
  for (const [from, event, expected] of TABLE) {
    it(`${event} from ${from} → ${String(expected)}`, () => {
      const result = transition(from, event);
      expect(result).to.deep.equal(
        typeof expected === "number" ? { ok: false, status: expected } : { ok: true, to: expected },
      );
    });
  }

  it("never moves a job out of a terminal state", () => {
    const events: JobEvent[] = [
      "reserve",
      "reservation_expired",
      "stack_finish",
      "acquire",
      "dispatch",
      "accept",
      "start",
      "cancel",
      "timeout",
      "agent_finish",
      "expire",
      "agent_lost",
      "unlock",
    ];
    for (const state of TERMINAL_STATES) {
      for (const event of events) expect(transition(state, event).ok, `${event} from ${state}`).to.equal(false);
    }
  });

  it("answers every state and event with a defined outcome", () => {
    for (const state of JOB_STATES) expect(transition(state, "acquire")).to.have.property("ok");
  });
});
