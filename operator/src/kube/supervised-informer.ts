import type { Informer, KubernetesObject, ObjectCache } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { Clock, Timer } from "./clock.js";

/** Makes a fresh client-node informer; production: `() => makeInformer(kc, path, listFn, labelSelector)`. */
export type InformerFactory<T extends KubernetesObject> = () => Informer<T> & ObjectCache<T>;

export interface SupervisedInformerOptions<T extends KubernetesObject> {
  name: string;
  factory: InformerFactory<T>;
  clock: Clock;
  logger: Logger;
  /** Called for adds, updates and deletes alike: controllers only enqueue keys. */
  onChange: (obj: T) => void;
  baseBackoffMs?: number;
  maxBackoffMs?: number;
  /** No event and no (re)connect for this long counts as stale and forces a relist. */
  staleAfterMs?: number;
  onRestart?: (reason: string) => void;
}

/**
 * A client-node informer that is never left dead. client-node's ListWatch emits `error` and stops for good on any
 * watch or list error other than 410 and client timeouts (cache.js `doneHandler`), so this wrapper restarts it from
 * a fresh list with exponential backoff, and a watchdog relists when nothing has been heard for `staleAfterMs`.
 */
export class SupervisedInformer<T extends KubernetesObject> {
  private current: (Informer<T> & ObjectCache<T>) | undefined;
  private lastGood: (Informer<T> & ObjectCache<T>) | undefined;
  private failures = 0;
  private lastSignMs = 0;
  private restartTimer: Timer | undefined;
  private watchdog: Timer | undefined;
  private stopped = false;
  private syncWaiters: (() => void)[] = [];
  private generation = 0;
  synced = false;

  constructor(private readonly options: SupervisedInformerOptions<T>) {}

  private get staleAfterMs(): number {
    return this.options.staleAfterMs ?? 300_000;
  }

  get stale(): boolean {
    return this.synced && this.options.clock.nowMs() - this.lastSignMs > this.staleAfterMs;
  }

  /** Synced and heard from recently: what /readyz reports. */
  healthy(): boolean {
    return this.synced && !this.stale;
  }

  async start(): Promise<void> {
    this.stopped = false;
    this.armWatchdog();
    await this.launch();
  }

  /** Resolves once the first list is in the cache; rejects with the informer's name after `timeoutMs`. */
  async waitForSync(timeoutMs: number): Promise<void> {
    if (this.synced) return;
    await new Promise<void>((resolve, reject) => {
      const timer = this.options.clock.setTimer(timeoutMs, () => {
        reject(new Error(`the ${this.options.name} informer did not sync within ${String(timeoutMs)} ms; check the API server and the operator's RBAC`));
      });
      this.syncWaiters.push(() => { timer.cancel(); resolve(); });
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.restartTimer?.cancel();
    this.watchdog?.cancel();
    const informer = this.current;
    this.current = undefined;
    await informer?.stop();
  }

  list(namespace?: string): T[] {
    return [...((this.lastGood ?? this.current)?.list(namespace) ?? [])];
  }

  get(name: string, namespace?: string): T | undefined {
    return (this.lastGood ?? this.current)?.get(name, namespace);
  }

  private async launch(): Promise<void> {
    const generation = ++this.generation;
    const informer = this.options.factory();
    const mine = (): boolean => generation === this.generation && !this.stopped;
    const sign = (): void => { if (mine()) this.lastSignMs = this.options.clock.nowMs(); };
    const changed = (obj: T): void => {
      sign();
      if (mine() && this.current === this.lastGood) this.options.onChange(obj);
    };
    informer.on("add", changed);
    informer.on("update", changed);
    informer.on("delete", changed);
    informer.on("connect", sign);
    informer.on("error", (err?: unknown) => { if (mine()) this.fail(informer, err); });
    this.current = informer;
    try {
      await informer.start();
    } catch (err) {
      if (mine()) this.fail(informer, err);
      return;
    }
    if (!mine()) return;
    // start() resolves after the first list was delivered: the cache is complete now.
    this.lastGood = informer;
    this.synced = true;
    this.failures = 0;
    sign();
    for (const waiter of this.syncWaiters.splice(0)) waiter();
    // Level-based: everything in a fresh list is reconciled, including what changed while a watch was down.
    for (const obj of informer.list()) this.options.onChange(obj);
  }

  private fail(informer: Informer<T> & ObjectCache<T>, err: unknown): void {
    this.synced = false;
    void informer.stop();
    this.scheduleRestart(`error: ${err instanceof Error ? err.message : String(err)}`);
  }

  private scheduleRestart(reason: string): void {
    if (this.stopped) return;
    this.generation++;
    this.restartTimer?.cancel();
    const delay = Math.min((this.options.baseBackoffMs ?? 500) * 2 ** this.failures, this.options.maxBackoffMs ?? 30_000);
    this.failures++;
    this.options.logger.warn(`Restarting ${this.options.name} informer`, { informer: this.options.name, reason, delayMs: delay });
    this.options.onRestart?.(reason);
    this.restartTimer = this.options.clock.setTimer(delay, () => {
      void this.launch().then(() => { this.options.logger.info(`Restarted ${this.options.name} informer`, { informer: this.options.name }); });
    });
  }

  private armWatchdog(): void {
    this.watchdog = this.options.clock.setTimer(Math.max(1_000, this.staleAfterMs / 2), () => {
      if (this.stopped) return;
      if (this.stale) {
        this.synced = false;
        const informer = this.current;
        if (informer) void informer.stop();
        this.scheduleRestart("stale: no event or reconnect heard");
      }
      this.armWatchdog();
    });
  }
}
