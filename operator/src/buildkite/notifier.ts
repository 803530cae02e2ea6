import type { Logger } from "winston";
import type { Clock, Timer } from "../kube/clock.js";
import { MAX_BATCH, type StacksClient } from "./stacks-client.js";

/** What {@link NotificationBatcher} needs; tests may pass a stub. */
export type NotifyClient = Pick<StacksClient, "notify">;

/** Dependencies and settings of {@link NotificationBatcher}. */
export interface NotificationBatcherOptions {
  client: NotifyClient;
  stackKey: string;
  clock: Clock;
  logger: Logger;
  /** How long notifications gather before they are sent (default 100 ms, as agent-stack-k8s). */
  intervalMs?: number;
}

interface Pending {
  jobUuid: string;
  detail: string;
  timestamp: Date;
}

/**
 * Collects timeline notifications ("Created pod", "Image pull failed", …) and posts them every `intervalMs`, at most
 * 1000 per call, one call at a time. Notifications are advisory, so failures are logged and dropped: `add` never
 * throws and `flush`/`stop` never reject, whatever the API does. The rate limit is per stack (200/s), which is why
 * many small calls would be worse than one batch.
 */
export class NotificationBatcher {
  private readonly client: NotifyClient;
  private readonly stackKey: string;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly intervalMs: number;
  private pending: Pending[] = [];
  private timer: Timer | undefined;
  /** The flush in progress (or a settled promise); flushes chain onto it so calls never overlap or reorder. */
  private tail: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(options: NotificationBatcherOptions) {
    this.client = options.client;
    this.stackKey = options.stackKey;
    this.clock = options.clock;
    this.logger = options.logger;
    this.intervalMs = options.intervalMs ?? 100;
  }

  /**
   * Queues a notification for `jobUuid`. `at` defaults to now: the timestamp is taken here, not when the batch is
   * sent, so the Buildkite timeline shows when it happened.
   */
  add(jobUuid: string, detail: string, at?: Date): void {
    if (this.stopped) {
      this.logger.debug("Dropped a notification after the batcher stopped", { job: jobUuid });
      return;
    }
    this.pending.push({ jobUuid, detail, timestamp: at ?? this.clock.now() });
    this.timer ??= this.clock.setTimer(this.intervalMs, () => {
      this.timer = undefined;
      // flush() never rejects, so nothing can go unhandled here.
      void this.flush();
    });
  }

  /** Sends everything queued so far, after any send already in progress. Never rejects. */
  flush(): Promise<void> {
    this.timer?.cancel();
    this.timer = undefined;
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return this.tail;
    this.tail = this.tail.then(() => this.send(batch));
    return this.tail;
  }

  /** Stops the timer, refuses further notifications and sends what is queued. Never rejects. */
  stop(): Promise<void> {
    this.stopped = true;
    return this.flush();
  }

  private async send(batch: Pending[]): Promise<void> {
    for (let offset = 0; offset < batch.length; offset += MAX_BATCH) {
      const items = batch.slice(offset, offset + MAX_BATCH);
      try {
        const { errors } = await this.client.notify(this.stackKey, items);
        for (const e of errors) {
          // Refused items (over 100 per job, job long finished, …) are not worth retrying; say which jobs they were.
          const jobs = e.indexes.map((i) => items[i]?.jobUuid).filter((j) => j !== undefined);
          this.logger.warn("Buildkite refused some notifications", {
            stack: this.stackKey,
            error: e.error,
            jobs: [...new Set(jobs)],
          });
        }
      } catch (err) {
        // The client has already retried what was retryable; dropping keeps a long outage from building a backlog.
        this.logger.warn("Dropped notifications that could not be sent", {
          stack: this.stackKey,
          count: items.length,
          error: err instanceof Error ? err.message : String(err),
        });
      }
    }
  }
}
