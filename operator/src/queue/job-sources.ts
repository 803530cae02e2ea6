import type { ConditionUpdate } from "../api/conditions.js";
import type { QueueStack, StackDirectory } from "../buildkite/stack-directory.js";
import type { ControllerContext } from "../kube/controller.js";
import { keyOf } from "../kube/resources.js";
import { QueueJobSource, type JobSourceSettings } from "./job-source.js";

/**
 * One {@link QueueJobSource} per BuildkiteQueue, started when the queue appears and stopped (with its stack
 * deregistered) when it is deleted. Also the operator's {@link StackDirectory}.
 */
export class JobSources implements StackDirectory {
  private readonly sources = new Map<string, QueueJobSource>();
  private stopped = false;

  constructor(
    private readonly ctx: ControllerContext,
    private readonly settings: JobSourceSettings,
    private readonly onChange: (queueKey: string) => void,
  ) {}

  /** Matches the running sources to the queues in the cache; called on every queue change. */
  sync(): void {
    if (this.stopped) return;
    const wanted = new Map(this.ctx.caches.queues.list()
      .filter((q) => !q.metadata.deletionTimestamp)
      .map((q) => [keyOf(q), q.metadata.uid ?? ""]));
    for (const [key, source] of this.sources) {
      if (wanted.get(key) === source.uid) continue;
      // Deleted (or deleted and created again under the same name): the old stack goes.
      this.sources.delete(key);
      this.ctx.logger.info("Stopping the job source of a deleted queue", { queue: key });
      void source.stop(true);
    }
    for (const [key, uid] of wanted) {
      if (this.sources.has(key)) continue;
      const source = new QueueJobSource(key, uid, this.ctx, this.settings, this.onChange);
      this.sources.set(key, source);
      source.start();
    }
  }

  stack(queueKey: string): QueueStack | undefined {
    return this.sources.get(queueKey)?.stack();
  }

  conditions(queueKey: string): ConditionUpdate[] {
    return this.sources.get(queueKey)?.conditions() ?? [];
  }

  /** Stops every source without deregistering: the queues still exist, and the next operator takes over. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.sources.values()].map((s) => s.stop(false)));
    this.sources.clear();
  }
}
