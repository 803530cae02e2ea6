import {
  PatchStrategy,
  setHeaderOptions,
  type CoreV1Api,
  type CoreV1Event,
  type V1ObjectReference,
} from "@kubernetes/client-node";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { Logger } from "winston";
import type { Clock } from "./clock.js";
import { apiMessage, isNotFound } from "./field-manager.js";

/** The object an Event is about. */
export interface EventTarget {
  apiVersion: string;
  kind: string;
  metadata: { name?: string; namespace?: string; uid?: string; resourceVersion?: string };
}

export type EventType = "Normal" | "Warning";

/** The two calls the recorder makes; a `CoreV1Api` fits, unit tests pass a small in-memory one. */
export type EventsApi = Pick<CoreV1Api, "createNamespacedEvent" | "patchNamespacedEvent">;

export interface EventRecorderOptions {
  core: EventsApi;
  /** `source.component` and `reportingComponent`, e.g. "buildkite-operator". */
  component: string;
  /** `reportingInstance`: which replica wrote the Event. Default: the host name (the pod's name in a cluster). */
  instance?: string;
  clock: Clock;
  logger: Logger;
}

/** A repeat within this long of the last one updates the Event's count instead of creating another (as client-go). */
export const AGGREGATE_WINDOW_MS = 600_000;
/** Most series remembered for aggregation; the least recently seen are forgotten first. */
export const MAX_TRACKED_SERIES = 4096;
/** The API server's limit on an Event's message (NoteLengthLimit, enforced on Events that carry eventTime). */
export const MAX_MESSAGE_BYTES = 1024;
/** Room for "." and 16 hex digits within a DNS subdomain name's 253 characters. */
const MAX_NAME_PREFIX = 253 - 17;

/** One Event object and the occurrences it stands for. Writes of a series run one after another. */
interface Series {
  name: string;
  namespace: string;
  involvedObject: V1ObjectReference;
  type: EventType;
  reason: string;
  message: string;
  firstMs: number;
  count: number;
  lastMs: number;
  /** The count the API server has (0: not created yet). */
  written: number;
  chain: Promise<void>;
}

/**
 * Records core/v1 Events, so `kubectl describe` and `kubectl get events` tell what the operator did and why.
 *
 * Fire-and-forget: {@link record} returns at once and never throws; a failed write is logged (once per run of
 * failures, so an API outage or missing RBAC does not flood the log) and never reaches a reconcile.
 *
 * Events are written the way client-go's tools/record writes them: firstTimestamp, lastTimestamp and count, no
 * eventTime. An Event with eventTime is a series of the events.k8s.io API and must also carry `action` and
 * `reportingInstance`; without it the API server applies the legacy validation, which these Events pass.
 */
export class EventRecorder {
  private readonly series = new Map<string, Series>();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly instance: string;
  private failing = false;

  constructor(private readonly opts: EventRecorderOptions) {
    this.instance = opts.instance ?? hostname();
  }

  /** How many series are remembered for aggregation (bounded by {@link MAX_TRACKED_SERIES}). */
  get tracked(): number {
    return this.series.size;
  }

  /**
   * Records that `reason` happened to `target`. The same object, type, reason and message again within
   * {@link AGGREGATE_WINDOW_MS} of the last time increments the existing Event's count.
   */
  record(target: EventTarget, type: EventType, reason: string, message: string): void {
    try {
      const now = this.opts.clock.nowMs();
      const text = cropUtf8(message, MAX_MESSAGE_BYTES);
      const key = JSON.stringify([
        target.apiVersion,
        target.kind,
        target.metadata.namespace,
        target.metadata.name,
        target.metadata.uid,
        type,
        reason,
        text,
      ]);
      this.prune(now);
      let series = this.series.get(key);
      if (series !== undefined && now - series.lastMs < AGGREGATE_WINDOW_MS) {
        series.count++;
        series.lastMs = now;
      } else {
        series = {
          ...this.newSeries(target, now),
          type,
          reason,
          message: text,
          count: 1,
          lastMs: now,
          written: 0,
          chain: Promise.resolve(),
        };
      }
      // Re-inserted, so the map's order is least recently seen first: pruning stops at the first fresh entry.
      this.series.delete(key);
      this.series.set(key, series);
      this.enqueue(series);
    } catch (err) {
      this.failed(err, { kind: target.kind, ...target.metadata }, reason);
    }
  }

  /** Waits for every Event write in flight, including ones queued meanwhile (tests, shutdown). */
  async flush(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
  }

  private enqueue(series: Series): void {
    const write = series.chain
      .then(() => this.write(series))
      .catch((err: unknown) => {
        this.failed(err, series.involvedObject, series.reason);
      });
    series.chain = write;
    this.inFlight.add(write);
    void write.finally(() => this.inFlight.delete(write));
  }

  /** Brings the API server's Event up to the series' count; repeats recorded while a write ran coalesce into one. */
  private async write(series: Series): Promise<void> {
    const count = series.count;
    if (series.written >= count) return;
    const { name, namespace } = series;
    if (series.written === 0) {
      await this.opts.core.createNamespacedEvent({ namespace, body: this.event(series, count) });
    } else {
      try {
        await this.opts.core.patchNamespacedEvent(
          { name, namespace, body: { count, lastTimestamp: new Date(series.lastMs) } },
          setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
        );
      } catch (err) {
        // Events expire (the API server's --event-ttl, 1 h by default) or get deleted: write it afresh.
        if (!isNotFound(err)) throw err;
        await this.opts.core.createNamespacedEvent({ namespace, body: this.event(series, count) });
      }
    }
    series.written = count;
    if (this.failing) {
      this.failing = false;
      this.opts.logger.info("Recorded events again after failures");
    }
  }

  private newSeries(
    target: EventTarget,
    now: number,
  ): Pick<Series, "name" | "namespace" | "involvedObject" | "firstMs"> {
    const { name = "", namespace, uid, resourceVersion } = target.metadata;
    const prefix = name.slice(0, MAX_NAME_PREFIX).replace(/[-.]+$/, "") || "object";
    return {
      name: `${prefix}.${randomBytes(8).toString("hex")}`,
      // Cluster-scoped objects get their Events in "default", with no namespace on involvedObject (API validation).
      namespace: namespace ?? "default",
      involvedObject: {
        apiVersion: target.apiVersion,
        kind: target.kind,
        name,
        ...(namespace === undefined ? {} : { namespace }),
        ...(uid === undefined ? {} : { uid }),
        ...(resourceVersion === undefined ? {} : { resourceVersion }),
      },
      firstMs: now,
    };
  }

  private event(series: Series, count: number): CoreV1Event {
    return {
      metadata: { name: series.name, namespace: series.namespace },
      involvedObject: series.involvedObject,
      type: series.type,
      reason: series.reason,
      message: series.message,
      source: { component: this.opts.component },
      reportingComponent: this.opts.component,
      reportingInstance: this.instance,
      firstTimestamp: new Date(series.firstMs),
      lastTimestamp: new Date(series.lastMs),
      count,
    };
  }

  /** Forgets series not seen within the window, and the least recently seen beyond the bound. */
  private prune(now: number): void {
    for (const [key, s] of this.series) {
      if (this.series.size < MAX_TRACKED_SERIES && now - s.lastMs < AGGREGATE_WINDOW_MS) break;
      this.series.delete(key);
    }
  }

  private failed(err: unknown, target: { kind?: string; name?: string; namespace?: string }, reason: string): void {
    const meta = { kind: target.kind, name: target.name, namespace: target.namespace, reason, error: apiMessage(err) };
    if (this.failing) {
      this.opts.logger.debug("Failed to record event", meta);
      return;
    }
    this.failing = true;
    this.opts.logger.warn(
      "Failed to record event; further failures are logged at debug level until a write succeeds",
      meta,
    );
  }
}

/** Crops `text` to at most `maxBytes` of UTF-8, never inside a character, marking the cut with "…". */
export function cropUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text) <= maxBytes) return text;
  const marker = "…";
  const budget = maxBytes - Buffer.byteLength(marker);
  let out = "";
  let bytes = 0;
  for (const char of text) {
    const size = Buffer.byteLength(char);
    if (bytes + size > budget) break;
    out += char;
    bytes += size;
  }
  return out + marker;
}
