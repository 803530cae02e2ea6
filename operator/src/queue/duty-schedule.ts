import { backoffDelayMs } from "../kube/backoff.js";
import type { Clock } from "../kube/clock.js";

/**
 * When each of a job source's duties is next due: `everyMs` after it last succeeded, or its own backoff after it
 * failed. Each duty keeps its own count, so a duty that keeps failing (listing jobs during an outage) never delays
 * another (extending reservations, checking for cancellations).
 */
export class DutySchedule<Name extends string> {
  private readonly duties = new Map<Name, { failures: number; notBeforeMs: number }>();

  constructor(
    private readonly clock: Clock,
    /** The first delay after a failure; each further failure in a row doubles it. */
    private readonly baseMs: number,
    private readonly maxMs: number,
  ) {}

  due(name: Name): boolean {
    return this.clock.nowMs() >= (this.duties.get(name)?.notBeforeMs ?? -Infinity);
  }

  succeeded(name: Name, everyMs = 0): void {
    this.duties.set(name, { failures: 0, notBeforeMs: this.clock.nowMs() + everyMs });
  }

  /** Counts a failure; returns how long the duty now waits. */
  failed(name: Name): number {
    const failures = (this.duties.get(name)?.failures ?? 0) + 1;
    const delay = backoffDelayMs(failures, this.baseMs, this.maxMs);
    this.duties.set(name, { failures, notBeforeMs: this.clock.nowMs() + delay });
    return delay;
  }
}

/**
 * The shortest wait between two polls while jobs are waiting. The Stacks API allows a stack 10 list calls a second
 * (429 beyond, with Retry-After, which the transport honours inside the call) and one poll may list two pages: 250 ms
 * keeps a busy queue at 8 calls a second at most.
 */
export const BUSY_POLL_MS = 250;

/**
 * How long until a job source polls again: soon while Buildkite still has jobs waiting for the queue (the last list
 * was not empty), so a job waits for a slot rather than for the next poll; the configured interval once the queue is
 * idle, so an idle queue costs what it always did. Pure.
 */
export function nextPollMs(jobsWaiting: boolean, pollIntervalMs: number): number {
  return jobsWaiting ? Math.min(pollIntervalMs, BUSY_POLL_MS) : pollIntervalMs;
}
