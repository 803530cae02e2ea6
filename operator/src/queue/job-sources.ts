import type { ConditionUpdate } from "../api/conditions.js";
import type { QueueStack, StackDirectory } from "../buildkite/stack-directory.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { BuildkiteApiError } from "../buildkite/errors.js";
import type { ControllerContext } from "../kube/controller.js";
import { keyOf } from "../kube/resources.js";
import { QueueJobSource, queueStackKey, stacksClientFor, type JobSourceSettings } from "./job-source.js";
import { readAgentToken, SourceError } from "./source-support.js";

/**
 * One {@link QueueJobSource} per BuildkiteQueue, started when the queue appears and stopped (with its stack
 * deregistered) when it is deleted. Also the operator's {@link StackDirectory}.
 */
export class JobSources implements StackDirectory {
  private readonly sources = new Map<string, QueueJobSource>();
  /** Uids of queues whose stack was released (deregistered while the queue is being deleted): never started again. */
  private readonly released = new Set<string>();
  private stopped = false;

  constructor(
    private readonly ctx: ControllerContext,
    private readonly settings: JobSourceSettings,
    private readonly onChange: (queueKey: string) => void,
  ) {}

  /** Matches the running sources to the queues in the cache; called on every queue change. */
  sync(): void {
    if (this.stopped) return;
    // A queue being deleted keeps its source (connected, taking nothing) until its finalizer releases it.
    const wanted = new Map(this.ctx.caches.queues.list()
      .filter((q) => !this.released.has(q.metadata.uid ?? ""))
      .map((q) => [keyOf(q), q.metadata.uid ?? ""]));
    for (const [key, source] of this.sources) {
      if (wanted.get(key) === source.uid) continue;
      // Gone without its finalizer (or deleted and created again under the same name): the old stack goes.
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

  async release(queue: BuildkiteQueue): Promise<string | undefined> {
    const key = keyOf(queue);
    this.released.add(queue.metadata.uid ?? "");
    const source = this.sources.get(key);
    if (source !== undefined && source.uid === queue.metadata.uid) {
      this.sources.delete(key);
      await source.stop(false);
    }
    // Deregistered with the token read now, so it also happens when the operator was down at the time of the delete.
    let token: string;
    try {
      token = await readAgentToken(this.ctx.clients, queue, this.settings.allowedEndpoints);
    } catch (err) {
      if (err instanceof SourceError) return err.message;
      throw err;
    }
    const client = stacksClientFor(queue, token, this.ctx, { ...this.settings, maxAttempts: 2 });
    const stack = queueStackKey(queue, this.settings);
    try {
      await client.deregister(stack);
    } catch (err) {
      // Never registered, or already deregistered: nothing is left behind.
      if (err instanceof BuildkiteApiError && err.status === 404) return undefined;
      if (err instanceof BuildkiteApiError && !err.retryable) return `Buildkite refused to deregister stack ${stack}: ${err.message}`;
      throw err;
    }
    return undefined;
  }

  /** Stops every source without deregistering: the queues still exist, and the next operator takes over. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.sources.values()].map((s) => s.stop(false)));
    this.sources.clear();
  }
}
