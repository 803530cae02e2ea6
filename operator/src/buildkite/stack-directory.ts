import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import type { NotificationBatcher } from "./notifier.js";
import type { StacksClient } from "./stacks-client.js";

/** A queue's registered Buildkite stack: what the job controller needs to report on that queue's jobs. */
export interface QueueStack {
  key: string;
  client: Pick<StacksClient, "finish" | "getStates">;
  notifier: Pick<NotificationBatcher, "add">;
}

/**
 * Where the controllers find each queue's Buildkite side, keyed by `namespace/name` of the BuildkiteQueue. The job
 * source owns the connections; the controllers only look them up, so one writer keeps each queue's status.
 */
export interface StackDirectory {
  /** The queue's stack once it is registered; undefined before that or while Buildkite is unreachable. */
  stack(queueKey: string): QueueStack | undefined;
  /** The queue's Buildkite conditions (Registered, Dispatching), for its status. */
  conditions(queueKey: string): ConditionUpdate[];
  /**
   * Stops the queue's job source for good and deregisters its stack (the queue is being deleted); resolves to why the
   * stack could not be deregistered, or undefined when it was (or there was none). Throws when Buildkite may answer later.
   */
  release(queue: BuildkiteQueue): Promise<string | undefined>;
}

/** For an operator (or a test) that does not talk to Buildkite. */
export const NO_STACKS: StackDirectory = { stack: () => undefined, conditions: () => [], release: () => Promise.resolve(undefined) };
