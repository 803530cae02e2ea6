import { backoffDelayMs } from "./backoff.js";
import type { Informer, KubernetesObject, ObjectCache } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { Clock, Timer } from "./clock.js";
import { apiMessage } from "./field-manager.js";

/**
 * Makes a fresh informer; production: a `LeanInformer` (lean-informer.ts), or client-node's `makeInformer` through a
 * proxy (informers.ts). Unit tests pass a fake of the list-and-watch stream with the same shape.
 */
export type InformerFactory<T extends KubernetesObject> = () => Informer<T> & ObjectCache<T>;

/** Why an informer was replaced; a bounded set, so it can label a metric. */
export type RestartReason = "error" | "stale";

export interface SupervisedInformerOptions<T extends KubernetesObject> {
  name: string;
  factory: InformerFactory<T>;
  clock: Clock;
  logger: Logger;
  /** Called for adds, updates and deletes alike, and for every object after each (re)list: controllers only enqueue keys. */
  onChange: (obj: T) => void;
  /** Shrinks a cached object in place (drop fields no reader needs); runs once per object version. */
  slim?: (obj: T) => void;
  /** First restart delay after an error; doubles per consecutive failure. Default 1 s. */
  baseBackoffMs?: number;
  /** Cap of the restart delay. Default 30 s. */
  maxBackoffMs?: number;
  /** An informer that stayed synced this long before failing restarts with the base delay again. Default 60 s. */
  resetBackoffAfterMs?: number;
  /** Nothing heard (no list, no event) for this long is stale: unhealthy, and a restart. Default 5 min. */
  staleAfterMs?: number;
  onRestart?: (reason: RestartReason) => void;
}

/** The first list did not arrive in time, or the informer was stopped first; `cause` is the informer's last error. */
export class InformerSyncError extends Error {
  override name = "InformerSyncError";
}

interface SyncWaiter {
  resolve(): void;
  reject(err: Error): void;
}

/**
 * An informer that is never left dead. client-node's ListWatch emits `error` and stops for good on any list or watch
 * error other than 410 and client timeouts (cache.js `doneHandler`); this wrapper then starts a fresh informer (a new
 * list) after an exponential backoff, serving the last good cache meanwhile.
 *
 * Watches can also die silently (a half-open connection). ListWatch's `connect` is no sign of life: it fires before
 * each watch request, including the reconnects after every 30 s client timeout against an unreachable server. So only
 * a list or an event counts as heard. A watchdog relists an informer that has been quiet for half `staleAfterMs`,
 * which keeps quiet but healthy resources fresh without ever reporting them stale; one that stays unheard for the
 * whole `staleAfterMs` (the relist hangs too) is unhealthy and restarted again.
 */
export class SupervisedInformer<T extends KubernetesObject> {
  private current: (Informer<T> & ObjectCache<T>) | undefined;
  /** The last informer whose list completed: what list() and get() serve, also while a replacement starts. */
  private cache: (Informer<T> & ObjectCache<T>) | undefined;
  private generation = 0;
  private running = false;
  /** An informer failed and no replacement has synced yet. */
  private broken = false;
  private failures = 0;
  private restartCount = 0;
  private healthySinceMs: number | undefined;
  private lastHeardMs: number | undefined;
  private lastLaunchMs = 0;
  private lastError: { message: string; error: unknown } | undefined;
  private restartTimer: Timer | undefined;
  private watchdog: Timer | undefined;
  private readonly syncWaiters = new Set<SyncWaiter>();

  constructor(private readonly options: SupervisedInformerOptions<T>) {}

  /** The first list has been delivered (client-go's HasSynced: stays true across restarts). */
  get synced(): boolean {
    return this.cache !== undefined;
  }

  /** Synced, but nothing heard for `staleAfterMs`. */
  get stale(): boolean {
    return this.synced && this.options.clock.nowMs() - (this.lastHeardMs ?? 0) >= this.staleAfterMs;
  }

  get name(): string {
    return this.options.name;
  }

  /** Informers replaced after an error or after going stale (quiet relists excluded): for a restarts metric. */
  get restarts(): number {
    return this.restartCount;
  }

  /** Running, synced, not failed and heard from recently: what /readyz reports. */
  healthy(): boolean {
    return this.running && this.synced && !this.broken && !this.stale;
  }

  /** Starts the first list and watch in the background; {@link waitForSync} tells when the cache is complete. */
  start(): Promise<void> {
    if (!this.running) {
      this.running = true;
      this.launch();
    }
    return Promise.resolve();
  }

  /** Resolves once the first list is in the cache; rejects with the informer's name after `timeoutMs` or on stop. */
  waitForSync(timeoutMs: number): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = this.options.clock.setTimer(timeoutMs, () => {
        this.syncWaiters.delete(waiter);
        const last = this.lastError === undefined ? "" : ` (last error: ${this.lastError.message})`;
        reject(
          new InformerSyncError(
            `the ${this.options.name} informer did not sync within ${String(timeoutMs)} ms${last}; check the API server and the operator's RBAC`,
            { cause: this.lastError?.error },
          ),
        );
      });
      const waiter: SyncWaiter = {
        resolve: () => {
          timer.cancel();
          resolve();
        },
        reject: (err) => {
          timer.cancel();
          reject(err);
        },
      };
      this.syncWaiters.add(waiter);
    });
  }

  /** Stops the informer and every timer; the last cache stays readable. */
  async stop(): Promise<void> {
    this.running = false;
    this.restartTimer?.cancel();
    this.restartTimer = undefined;
    for (const waiter of this.syncWaiters)
      waiter.reject(new InformerSyncError(`the ${this.options.name} informer was stopped before it synced`));
    this.syncWaiters.clear();
    await this.retire();
  }

  list(namespace?: string): T[] {
    return [...(this.cache?.list(namespace) ?? [])];
  }

  get(name: string, namespace?: string): T | undefined {
    return this.cache?.get(name, namespace);
  }

  private get staleAfterMs(): number {
    return this.options.staleAfterMs ?? 300_000;
  }

  private launch(): void {
    const generation = ++this.generation;
    this.lastLaunchMs = this.options.clock.nowMs();
    this.armWatchdog();
    let informer: Informer<T> & ObjectCache<T>;
    try {
      informer = this.options.factory();
    } catch (err) {
      this.fail(err);
      return;
    }
    // A stopped ListWatch still calls its error callbacks (the aborted request), so every callback checks that its
    // informer is still the current one.
    const mine = (): boolean => generation === this.generation && this.running;
    const changed = (obj: T): void => {
      trim(obj);
      this.options.slim?.(obj);
      // Before its list completes, an informer's adds are the list itself: they are replayed in one go on sync.
      if (!mine() || this.cache !== informer) return;
      this.heard();
      this.options.onChange(obj);
    };
    informer.on("add", changed);
    informer.on("update", changed);
    informer.on("delete", changed);
    informer.on("error", (err?: unknown) => {
      if (mine()) this.fail(err);
    });
    this.current = informer;
    // ListWatch.start() resolves once the list is in its cache and the watch is open; a failed list calls the
    // error callbacks and still resolves. One stopped during its list still opens the watch afterwards: stop it again.
    informer
      .start()
      .then(
        () => {
          if (mine()) this.adopt(informer);
          else void this.stopInformer(informer);
        },
        (err: unknown) => {
          if (mine()) this.fail(err);
        },
      )
      .catch((err: unknown) => {
        this.options.logger.error("Failed to deliver informer changes", {
          informer: this.options.name,
          error: apiMessage(err),
        });
      });
  }

  private adopt(informer: Informer<T> & ObjectCache<T>): void {
    const previous = this.cache;
    const restarted = this.broken;
    this.cache = informer;
    this.broken = false;
    this.lastError = undefined;
    this.heard();
    this.healthySinceMs ??= this.options.clock.nowMs();
    for (const waiter of this.syncWaiters) waiter.resolve();
    this.syncWaiters.clear();
    if (restarted)
      this.options.logger.info("Restarted informer", { informer: this.options.name, restarts: this.restartCount });
    // Level-based: after a (re)list every object is reconciled, including what changed while no watch ran. Objects
    // the old cache held and the new list lacks were deleted meanwhile; no delete event will ever come for them, so
    // they are reported here (their keys then reconcile against a cache without them).
    if (previous !== undefined && previous !== informer) {
      for (const old of previous.list()) {
        if (informer.get(old.metadata?.name ?? "", old.metadata?.namespace) === undefined) this.options.onChange(old);
      }
    }
    for (const obj of informer.list()) {
      trim(obj);
      this.options.slim?.(obj);
      this.options.onChange(obj);
    }
  }

  private heard(): void {
    this.lastHeardMs = this.options.clock.nowMs();
  }

  private fail(err: unknown): void {
    const now = this.options.clock.nowMs();
    if (this.healthySinceMs !== undefined && now - this.healthySinceMs >= (this.options.resetBackoffAfterMs ?? 60_000))
      this.failures = 0;
    this.healthySinceMs = undefined;
    this.broken = true;
    this.lastError = { message: apiMessage(err), error: err };
    void this.retire();
    const delayMs = backoffDelayMs(
      this.failures + 1,
      this.options.baseBackoffMs ?? 1_000,
      this.options.maxBackoffMs ?? 30_000,
    );
    this.failures++;
    this.restartCount++;
    this.options.logger.warn("Informer failed; scheduled a restart", {
      informer: this.options.name,
      error: this.lastError.message,
      delayMs,
      restarts: this.restartCount,
    });
    this.options.onRestart?.("error");
    this.restartTimer = this.options.clock.setTimer(delayMs, () => {
      this.restartTimer = undefined;
      if (this.running) this.launch();
    });
  }

  /** Detaches and stops the current informer and its watchdog; never rejects. */
  private async retire(): Promise<void> {
    this.generation++;
    this.watchdog?.cancel();
    this.watchdog = undefined;
    const informer = this.current;
    this.current = undefined;
    if (informer) await this.stopInformer(informer);
  }

  private async stopInformer(informer: Informer<T>): Promise<void> {
    try {
      await informer.stop();
    } catch (err) {
      this.options.logger.debug("Failed to stop informer", { informer: this.options.name, error: apiMessage(err) });
    }
  }

  /** Due when the informer has been quiet for half the stale period, counted from its last sign or (re)launch. */
  private armWatchdog(): void {
    this.watchdog?.cancel();
    const quietSince = Math.max(this.lastHeardMs ?? 0, this.lastLaunchMs);
    const dueInMs = quietSince + this.staleAfterMs / 2 - this.options.clock.nowMs();
    this.watchdog = this.options.clock.setTimer(Math.max(0, dueInMs), () => {
      this.checkQuiet();
    });
  }

  private checkQuiet(): void {
    this.watchdog = undefined;
    if (!this.running) return;
    const now = this.options.clock.nowMs();
    if (now - Math.max(this.lastHeardMs ?? 0, this.lastLaunchMs) < this.staleAfterMs / 2) {
      this.armWatchdog();
      return;
    }
    const stale = this.lastHeardMs === undefined || now - this.lastHeardMs >= this.staleAfterMs;
    if (stale) {
      this.restartCount++;
      this.options.logger.warn("Informer went stale; restarted it", {
        informer: this.options.name,
        quietMs: now - (this.lastHeardMs ?? this.lastLaunchMs),
        restarts: this.restartCount,
      });
      this.options.onRestart?.("stale");
    } else {
      this.options.logger.debug("Relisted quiet informer", { informer: this.options.name });
    }
    void this.retire();
    this.launch();
  }
}

/**
 * Drops `metadata.managedFields` from a cached object (the object the cache holds, so the cache shrinks): nothing
 * reads them, and with several field managers they are often the largest part of an object. controller-runtime
 * trims them the same way.
 */
function trim(obj: KubernetesObject): void {
  if (obj.metadata?.managedFields !== undefined) delete obj.metadata.managedFields;
}
