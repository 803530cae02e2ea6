import { backoffDelayMs } from "./backoff.js";
import type { Clock, Timer } from "./clock.js";

/** What a reconcile returns: `requeueAfterMs` asks for another pass later even though this one succeeded. */
// `void` lets a reconciler with nothing to ask for simply `return;` or fall off the end.
// eslint-disable-next-line @typescript-eslint/no-invalid-void-type
export type ReconcileResult = { requeueAfterMs?: number } | undefined | void;

/** Handles one key; throwing means "retry this key with backoff". */
export type Reconcile = (key: string) => Promise<ReconcileResult>;

/** Construction options of a {@link WorkQueue}. */
export interface WorkQueueOptions {
  /** Names the queue in errors and in what `onDone` callers log. */
  name: string;
  clock: Clock;
  /** Default 5 ms; a key's n-th consecutive failure waits `baseDelayMs * 2^(n-1)`. */
  baseDelayMs?: number;
  /** Default 300 000 ms (5 min): the cap on a key's backoff. */
  maxDelayMs?: number;
  /**
   * Called after every handled key: for metrics and logging; `error` set when the handler threw. `retries` is how
   * many consecutive times the key had failed before this attempt.
   */
  onDone?: (info: { key: string; durationMs: number; error?: unknown; retries: number }) => void;
  /**
   * Why no reconcile may start now (this replica may not act), or undefined when one may. Asked right before each
   * reconcile: a refused key is not handed to the reconciler but fails with the error returned, backing off as any
   * failure does.
   */
  startProblem?: () => Error | undefined;
}

/**
 * A keyed, deduplicating, rate-limited work queue in the style of client-go's workqueue: informer callbacks `add`
 * keys, workers reconcile them. A key waiting is queued once; a key being handled is never handed to a second
 * worker, but is marked dirty and queued once more when its handler finishes, so no change is missed.
 */
export class WorkQueue {
  // A Set keeps insertion order, so it is both the FIFO of ready keys and their dedupe index.
  private readonly queued = new Set<string>();
  private readonly processing = new Set<string>();
  // Keys added while being processed: re-queued once when their handler finishes.
  private readonly dirty = new Set<string>();
  private readonly delayed = new Map<string, { at: number; timer: Timer }>();
  private readonly failures = new Map<string, number>();
  // Idle workers park on these instead of polling; `add` wakes one, `shutdown` wakes all.
  private readonly wakers: (() => void)[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private workers: Promise<void>[] | undefined;
  private shuttingDown = false;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;

  constructor(private readonly options: WorkQueueOptions) {
    this.baseDelayMs = options.baseDelayMs ?? 5;
    this.maxDelayMs = options.maxDelayMs ?? 300_000;
  }

  /** Keys waiting to be handled (not counting delayed ones). */
  get name(): string {
    return this.options.name;
  }

  get length(): number {
    return this.queued.size;
  }

  /** Keys being handled right now. */
  get inFlight(): number {
    return this.processing.size;
  }

  /** Queues `key` unless it is already waiting; if it is being handled, queues it once more afterwards. */
  add(key: string): void {
    if (this.shuttingDown) return;
    if (this.processing.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.wakers.shift()?.();
  }

  /** Queues `key` after `ms`; if the key already has a delayed add, only the sooner of the two is kept. */
  addAfter(key: string, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = this.options.clock.nowMs() + ms;
    const existing = this.delayed.get(key);
    if (existing && existing.at <= at) return;
    existing?.timer.cancel();
    const timer = this.options.clock.setTimer(ms, () => {
      this.delayed.delete(key);
      this.add(key);
    });
    this.delayed.set(key, { at, timer });
  }

  /** Queues `key` after its backoff and counts one more failure for it. */
  addRateLimited(key: string): void {
    const failures = (this.failures.get(key) ?? 0) + 1;
    this.failures.set(key, failures);
    this.addAfter(key, backoffDelayMs(failures, this.baseDelayMs, this.maxDelayMs));
  }

  /** Resets `key`'s failure count, so its next failure backs off from the base delay again. */
  forget(key: string): void {
    this.failures.delete(key);
  }

  /** Starts `workers` concurrent workers calling `reconcile`; call once. */
  start(workers: number, reconcile: Reconcile): void {
    if (this.workers) throw new Error(`work queue ${this.options.name} already started`);
    this.workers = Array.from({ length: workers }, () => this.work(reconcile));
  }

  /** Stops accepting keys, drops waiting and delayed ones, and resolves when in-flight handlers have finished. */
  async shutdown(): Promise<void> {
    if (!this.shuttingDown) {
      this.shuttingDown = true;
      for (const { timer } of this.delayed.values()) timer.cancel();
      this.delayed.clear();
      // Dropped keys are not lost for good: the informers list every object again when the operator next starts.
      this.queued.clear();
      this.dirty.clear();
      for (const wake of this.wakers.splice(0)) wake();
      this.notifyIfIdle();
    }
    await Promise.all(this.workers ?? []);
  }

  /** Resolves when nothing is waiting or in flight (delayed keys do not count): lets tests wait without sleeping. */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async work(reconcile: Reconcile): Promise<void> {
    for (;;) {
      const key = await this.next();
      if (key === undefined) return;
      await this.handle(key, reconcile);
    }
  }

  /** The oldest ready key, marked in flight; undefined once shutting down. */
  private async next(): Promise<string | undefined> {
    for (;;) {
      if (this.shuttingDown) return undefined;
      const key = this.queued.values().next();
      if (!key.done) {
        this.queued.delete(key.value);
        this.processing.add(key.value);
        return key.value;
      }
      // Another worker may take the key this wake-up was for; then the loop simply parks again.
      await new Promise<void>((resolve) => this.wakers.push(resolve));
    }
  }

  private async handle(key: string, reconcile: Reconcile): Promise<void> {
    const retries = this.failures.get(key) ?? 0;
    const started = this.options.clock.nowMs();
    let outcome: { ok: true; result: ReconcileResult } | { ok: false; error: unknown };
    try {
      const refused = this.options.startProblem?.();
      if (refused) throw refused;
      outcome = { ok: true, result: await reconcile(key) };
    } catch (error) {
      // `throw undefined` (or null) would otherwise look like success to an onDone checking `error !== undefined`.
      outcome = {
        ok: false,
        error: error ?? new Error(`reconcile of ${key} in ${this.options.name} threw ${String(error)}`),
      };
    }
    this.processing.delete(key);
    if (!outcome.ok) {
      this.addRateLimited(key);
    } else {
      this.forget(key);
      const after = outcome.result?.requeueAfterMs;
      if (after !== undefined) this.addAfter(key, after);
    }
    if (this.dirty.delete(key)) this.add(key);
    const durationMs = this.options.clock.nowMs() - started;
    try {
      this.options.onDone?.(
        outcome.ok ? { key, durationMs, retries } : { key, durationMs, retries, error: outcome.error },
      );
    } catch {
      // A faulty metrics or logging callback must not kill the worker and silently shrink the pool.
    }
    this.notifyIfIdle();
  }

  private isIdle(): boolean {
    return this.queued.size === 0 && this.processing.size === 0;
  }

  private notifyIfIdle(): void {
    if (this.isIdle()) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }
}
