import { PatchStrategy, setHeaderOptions, type CoreV1Api, type CoreV1Event } from "@kubernetes/client-node";
import { randomBytes } from "node:crypto";
import type { Logger } from "winston";
import type { Clock } from "./clock.js";

/** The object an Event is about. */
export interface EventTarget {
  apiVersion: string;
  kind: string;
  metadata: { name?: string; namespace?: string; uid?: string; resourceVersion?: string };
}

export type EventType = "Normal" | "Warning";

/** Repeats of one event within this window update its count instead of creating another (as client-go does). */
const AGGREGATE_MS = 600_000;
const MAX_TRACKED = 4096;
const MAX_MESSAGE = 1024;

interface Seen {
  name: string;
  namespace: string;
  count: number;
  firstMs: number;
  lastMs: number;
}

/**
 * Records core/v1 Events, so `kubectl describe` and `kubectl get events` tell what the operator did and why.
 * Fire-and-forget: a failed write is logged, never thrown into a reconcile.
 */
export class EventRecorder {
  private readonly seen = new Map<string, Seen>();
  private readonly pending = new Set<Promise<void>>();

  constructor(private readonly opts: { core: CoreV1Api; component: string; clock: Clock; logger: Logger }) {}

  record(target: EventTarget, type: EventType, reason: string, message: string): void {
    const write = this.write(target, type, reason, message.slice(0, MAX_MESSAGE)).catch((err: unknown) => {
      this.opts.logger.warn("Failed to record event", { reason, object: target.metadata.name, namespace: target.metadata.namespace, error: err instanceof Error ? err.message : String(err) });
    });
    this.pending.add(write);
    void write.finally(() => this.pending.delete(write));
  }

  /** Waits for every Event write in flight (tests, shutdown). */
  async flush(): Promise<void> {
    await Promise.all([...this.pending]);
  }

  private async write(target: EventTarget, type: EventType, reason: string, message: string): Promise<void> {
    const now = this.opts.clock.nowMs();
    this.prune(now);
    const namespace = target.metadata.namespace ?? "default";
    const key = JSON.stringify([target.metadata.uid ?? target.metadata.name, type, reason, message]);
    const previous = this.seen.get(key);
    if (previous && now - previous.lastMs < AGGREGATE_MS) {
      previous.count++;
      previous.lastMs = now;
      try {
        await this.opts.core.patchNamespacedEvent({ name: previous.name, namespace, body: { count: previous.count, lastTimestamp: new Date(now) } },
          setHeaderOptions("Content-Type", PatchStrategy.MergePatch));
        return;
      } catch {
        // The Event expired or was deleted: create a new one below.
      }
    }
    const name = `${target.metadata.name ?? "object"}.${randomBytes(8).toString("hex")}`;
    const body: CoreV1Event = {
      metadata: { name, namespace },
      involvedObject: {
        apiVersion: target.apiVersion, kind: target.kind, name: target.metadata.name ?? "", namespace,
        ...(target.metadata.uid ? { uid: target.metadata.uid } : {}),
        ...(target.metadata.resourceVersion ? { resourceVersion: target.metadata.resourceVersion } : {}),
      },
      type, reason, message,
      source: { component: this.opts.component },
      reportingComponent: this.opts.component,
      firstTimestamp: new Date(now),
      lastTimestamp: new Date(now),
      count: 1,
    };
    await this.opts.core.createNamespacedEvent({ namespace, body });
    this.seen.set(key, { name, namespace, count: 1, firstMs: now, lastMs: now });
  }

  private prune(now: number): void {
    for (const [key, s] of this.seen) {
      if (now - s.lastMs >= AGGREGATE_MS || this.seen.size > MAX_TRACKED) this.seen.delete(key);
    }
  }
}
