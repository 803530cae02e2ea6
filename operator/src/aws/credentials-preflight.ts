import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import type { ControllerContext } from "../kube/controller.js";
import { keyOf, splitKey } from "../kube/resources.js";
import { checkCredentials, checkTarget } from "./credentials-check.js";
import { QueueCredentials } from "./queue-credentials.js";
import { StsCaller } from "./sts-caller.js";

/** How the preflight talks to STS; one set for the whole operator. */
export interface CredentialsSettings {
  /** An STS endpoint URL instead of the regional AWS endpoint of each queue's region. */
  stsEndpoint?: string;
  /** How often working credentials are checked again (default 300000 ms). */
  recheckIntervalMs: number;
  /** The longest wait between attempts after failures (default 300000 ms). */
  maxBackoffMs: number;
  /** Connection and request timeout of one STS call (default 10000 ms). */
  stsTimeoutMs?: number;
}

export const DEFAULT_CREDENTIALS_SETTINGS: CredentialsSettings = { recheckIntervalMs: 300_000, maxBackoffMs: 300_000 };
const DEFAULT_STS_TIMEOUT_MS = 10_000;

/**
 * The IRSA credentials preflight (DESIGN §4): for every BuildkiteQueue with `spec.aws`, requests a token of the
 * queue's ServiceAccount and exchanges it at STS `AssumeRoleWithWebIdentity`, as a job pod's SDK would, and reports
 * the result as the queue's `CredentialsReady` condition, an Event on each change, and a line for the timeline of the
 * queue's jobs while the credentials are broken. Each queue is checked on its own timer.
 */
export class CredentialsPreflight {
  private readonly checks = new Map<string, QueueCredentials>();
  private readonly sts: StsCaller;
  private stopped = false;

  constructor(
    private readonly ctx: ControllerContext,
    private readonly settings: CredentialsSettings,
    /** Called when a queue's CredentialsReady condition changes (or goes away), so its status is written. */
    private readonly onChange: (queueKey: string) => void,
  ) {
    this.sts = new StsCaller({
      timeoutMs: settings.stsTimeoutMs ?? DEFAULT_STS_TIMEOUT_MS,
      ...(settings.stsEndpoint !== undefined ? { stsEndpoint: settings.stsEndpoint } : {}),
    });
  }

  /**
   * Matches the running checks to the queues in the cache; called on every queue change. Starts checking queues that
   * gained `spec.aws`, stops those that lost it or were deleted, and re-checks at once those whose generation or
   * `spec.aws` changed.
   */
  sync(): void {
    if (this.stopped) return;
    const wanted = new Map<string, BuildkiteQueue>();
    for (const q of this.ctx.caches.queues.list()) {
      if (q.spec.aws && !q.metadata.deletionTimestamp) wanted.set(keyOf(q), q);
    }
    for (const [key, check] of this.checks) {
      if (wanted.get(key)?.metadata.uid === check.uid) continue;
      this.checks.delete(key);
      void check.stop();
      this.ctx.metrics.credentials(key, undefined);
      this.onChange(key);
    }
    for (const [key, queue] of wanted) {
      const existing = this.checks.get(key);
      if (existing) {
        existing.update(queue);
        continue;
      }
      const check = new QueueCredentials(key, queue.metadata.uid ?? "", queue, {
        clock: this.ctx.clock,
        logger: this.ctx.logger,
        recorder: this.ctx.recorder,
        metrics: this.ctx.metrics,
        settings: this.settings,
        current: () => {
          const { namespace, name } = splitKey(key);
          return this.ctx.caches.queues.get(name, namespace);
        },
        check: (q) => checkCredentials(this.ctx.clients.core, this.sts, q),
        target: (q) => checkTarget(q, this.sts),
        onChange: this.onChange,
      });
      this.checks.set(key, check);
      check.start();
    }
  }

  /** [] for a queue without `spec.aws`; else its one CredentialsReady condition. */
  conditions(queueKey: string): ConditionUpdate[] {
    const check = this.checks.get(queueKey);
    return check ? [check.current()] : [];
  }

  /** Stops every check (answers still in flight are dropped) and closes the STS clients. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.checks.values()].map((c) => c.stop()));
    this.checks.clear();
    this.sts.destroy();
  }
}
