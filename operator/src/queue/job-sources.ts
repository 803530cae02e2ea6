import type { ConditionUpdate } from "../api/conditions.js";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import type { ControllerContext } from "../kube/controller.js";
import { keyOf } from "../kube/resources.js";
import type { AgentTokenReader } from "./agent-token.js";
import type { QueueBuildkiteSide } from "./controller.js";
import { QueueJobSource, type JobSourceSettings } from "./job-source.js";

/**
 * One {@link QueueJobSource} per BuildkiteQueue, started when the queue appears and released (its stack deregistered)
 * when it is deleted: the queue controller's view of the Buildkite side.
 */
export class JobSources implements QueueBuildkiteSide {
  private readonly sources = new Map<string, QueueJobSource>();
  /** Uids of queues whose stack was released (deregistered while the queue is being deleted): never started again. */
  private readonly released = new Set<string>();
  private stopped = false;

  constructor(
    private readonly ctx: ControllerContext,
    private readonly tokens: AgentTokenReader,
    private readonly settings: JobSourceSettings,
    private readonly onChange: (queueKey: string) => void,
  ) {}

  /** Matches the running sources to the queues in the cache; called on every queue change. */
  sync(): void {
    if (this.stopped) return;
    // A queue being deleted keeps its source (connected, taking nothing) until its finalizer releases it.
    const wanted = new Map(
      this.ctx.caches.queues
        .list()
        .filter((q) => !this.released.has(q.metadata.uid ?? ""))
        .map((q) => [keyOf(q), q.metadata.uid ?? ""]),
    );
    for (const [key, source] of this.sources) {
      if (wanted.get(key) === source.uid) continue;
      // Gone without its finalizer (or deleted and made anew under the same name): its own stack goes.
      this.sources.delete(key);
      this.ctx.logger.info("Stopping the job source of a deleted queue", { queue: key });
      void source.stop(true);
    }
    for (const [key, uid] of wanted) {
      if (this.sources.has(key)) continue;
      const source = new QueueJobSource(key, uid, this.ctx, this.tokens, this.settings, this.onChange);
      this.sources.set(key, source);
      source.start();
    }
  }

  /** A BuildkiteJob changed in the cache: its queue's source sends the timeline notes its state calls for. */
  jobChanged(job: BuildkiteJob): void {
    this.sources.get(`${job.metadata.namespace ?? ""}/${job.spec.queueRef.name}`)?.jobChanged(job);
  }

  connected(queueKey: string): boolean {
    return this.sources.get(queueKey)?.connected() ?? false;
  }

  conditions(queueKey: string): ConditionUpdate[] {
    return this.sources.get(queueKey)?.conditions() ?? [];
  }

  async release(queue: BuildkiteQueue): Promise<string | undefined> {
    const key = keyOf(queue);
    this.released.add(queue.metadata.uid ?? "");
    let source = this.sources.get(key);
    if (source !== undefined && source.uid === queue.metadata.uid) this.sources.delete(key);
    else
      source = new QueueJobSource(key, queue.metadata.uid ?? "", this.ctx, this.tokens, this.settings, this.onChange);
    const problem = await source.release(queue);
    this.tokens.forget(queue);
    return problem;
  }

  /** Stops every source without deregistering: the queues still exist, and the next operator takes over. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.sources.values()].map((s) => s.stop()));
    this.sources.clear();
  }
}
