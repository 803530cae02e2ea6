import type { Logger } from "winston";
import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import type { Clock, Timer } from "../kube/clock.js";
import type { EventRecorder } from "../kube/event-recorder.js";
import type { Metrics } from "../observability/metrics.js";
import {
  CHECKING,
  checkingCondition,
  eventTypeOf,
  gaugeValueOf,
  planCredentials,
  type RetrySettings,
} from "./credentials-policy.js";
import type { CheckOutcome, CheckTarget } from "./outcome.js";

/** What one queue's checker needs; the checks themselves come in as a function, so the scheduling is testable alone. */
export interface QueueCredentialsDeps {
  clock: Clock;
  logger: Logger;
  recorder: Pick<EventRecorder, "record">;
  metrics: Pick<Metrics, "credentials">;
  settings: RetrySettings;
  /** The queue as the cache holds it now. */
  current: () => BuildkiteQueue | undefined;
  check: (queue: BuildkiteQueue) => Promise<CheckOutcome>;
  target: (queue: BuildkiteQueue) => CheckTarget;
  onChange: (queueKey: string) => void;
}

/** What a check result depends on: a change of it makes the result stale and a new check due at once. */
const fingerprintOf = (q: BuildkiteQueue): string =>
  JSON.stringify([q.metadata.uid, q.metadata.generation, q.spec.aws]);
const awsOf = (q: BuildkiteQueue): string => JSON.stringify(q.spec.aws);

/**
 * The credentials check of one BuildkiteQueue with `spec.aws`: checks at once, then again every
 * `recheckIntervalMs` after a success or with a growing backoff after failures; at once again when the queue's
 * generation or `spec.aws` changes. An answer to a check started before such a change is dropped, never shown.
 * Runs on its own timer, so one queue's STS trouble never holds up another's.
 */
export class QueueCredentials {
  private condition: ConditionUpdate;
  private fingerprint: string;
  private aws: string;
  private failures = 0;
  private timer: Timer | undefined;
  private running = false;
  private stopped = false;

  constructor(
    readonly key: string,
    readonly uid: string,
    queue: BuildkiteQueue,
    private readonly deps: QueueCredentialsDeps,
  ) {
    this.fingerprint = fingerprintOf(queue);
    this.aws = awsOf(queue);
    this.condition = checkingCondition(deps.target(queue));
  }

  start(): void {
    this.schedule(0);
  }

  /** The queue changed in the cache: re-check at once if its generation or `spec.aws` did. */
  update(queue: BuildkiteQueue): void {
    const fingerprint = fingerprintOf(queue);
    if (this.stopped || fingerprint === this.fingerprint) return;
    this.fingerprint = fingerprint;
    this.failures = 0;
    if (awsOf(queue) !== this.aws) {
      // The last answer was about another role or audience: say so rather than show it for the new spec.
      this.aws = awsOf(queue);
      this.set(checkingCondition(this.deps.target(queue)), queue);
    }
    // A check in flight finishes first and, seeing the new fingerprint, starts the next at once.
    if (!this.running) this.schedule(0);
  }

  current(): ConditionUpdate {
    return this.condition;
  }

  /**
   * Stops checking. A check in flight is not waited for (a TokenRequest to a hung API server has no deadline): its
   * answer is dropped, so nothing is recorded or reported once this returns.
   */
  stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    this.timer = undefined;
    return Promise.resolve();
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer?.cancel();
    this.timer = this.deps.clock.setTimer(delayMs, () => {
      this.timer = undefined;
      void this.run();
    });
  }

  private async run(): Promise<void> {
    // stop() cancels the timer, so a run never starts once stopped; it may be stopped by the time the check answers
    const queue = this.deps.current();
    if (!queue?.spec.aws) {
      // Gone from the cache or without spec.aws: sync() stops this check if that lasts; look again later meanwhile.
      this.schedule(this.deps.settings.recheckIntervalMs);
      return;
    }
    const started = fingerprintOf(queue);
    this.running = true;
    let outcome: CheckOutcome;
    try {
      outcome = await this.deps.check(queue);
    } catch (err) {
      // checkCredentials never throws; a bug in it must still not stop the checks.
      outcome = {
        kind: "unavailable",
        code: "Error",
        detail: err instanceof Error ? err.message : String(err),
        issuer: undefined,
      };
    } finally {
      this.running = false;
    }
    if (this.stopped) return;
    const latest = this.deps.current();
    if (started !== this.fingerprint || !latest) {
      this.schedule(0);
      return;
    }
    this.failures = outcome.kind === "assumed" ? 0 : this.failures + 1;
    const plan = planCredentials(outcome, this.deps.target(latest), this.failures, this.deps.settings);
    this.set(plan.condition, latest);
    this.schedule(plan.retryInMs);
  }

  /** Updates the condition; a change of status or reason is an Event and a log line, any change a status write. */
  private set(update: ConditionUpdate, queue: BuildkiteQueue): void {
    const previous = this.condition;
    if (previous.status === update.status && previous.reason === update.reason && previous.message === update.message)
      return;
    this.condition = update;
    this.deps.metrics.credentials(this.key, gaugeValueOf(update));
    if ((previous.status !== update.status || previous.reason !== update.reason) && update.reason !== CHECKING) {
      const type = eventTypeOf(update);
      this.deps.recorder.record(queue, type, update.reason, update.message);
      const meta = {
        namespace: queue.metadata.namespace,
        queue: queue.metadata.name,
        status: update.status,
        reason: update.reason,
        detail: update.message,
      };
      if (type === "Normal") this.deps.logger.info("Checked AWS credentials", meta);
      else this.deps.logger.warn("Checked AWS credentials; they do not work", meta);
    }
    this.deps.onChange(this.key);
  }
}
