import type { CoordinationV1Api, V1Lease } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { Clock, Timer } from "./clock.js";
import { isConflict, isNotFound, isAlreadyExists, apiMessage } from "./field-manager.js";

export interface LeaderElectionOptions {
  client: Pick<CoordinationV1Api, "readNamespacedLease" | "createNamespacedLease" | "replaceNamespacedLease">;
  namespace: string;
  name: string;
  /** This replica's identity (the pod name), written as the lease's holder. */
  identity: string;
  clock: Clock;
  logger: Logger;
  /** How long a lease holds without renewal before another replica may take it (default 15 s). */
  leaseDurationMs?: number;
  /** A leader that could not renew for this long steps down (default ⅔ of the lease duration). */
  renewDeadlineMs?: number;
  /** How often to try to acquire or renew (default lease duration ÷ 7.5, i.e. 2 s for 15 s). */
  retryPeriodMs?: number;
}

export interface LeaderCallbacks {
  onStartedLeading(): void;
  onStoppedLeading(): void;
}

/**
 * Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it: the holder renews the
 * lease every retry period; the others take it once it has not changed for a whole lease duration, measured on
 * their own clock from when they last saw it change (so clock skew between nodes does not matter). Writes use the
 * lease's resourceVersion, so two replicas can never both win.
 */
export class LeaderElector {
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private timer: Timer | undefined;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;
  private isLeader = false;
  private lastRenewMs = 0;
  /** The last lease record seen (holder and renew time), and when it was first seen on this clock. */
  private observed: { record: string; atMs: number } | undefined;
  private callbacks: LeaderCallbacks | undefined;

  constructor(private readonly options: LeaderElectionOptions) {
    this.leaseDurationMs = options.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = options.renewDeadlineMs ?? Math.round((this.leaseDurationMs * 2) / 3);
    this.retryPeriodMs = options.retryPeriodMs ?? Math.round(this.leaseDurationMs / 7.5);
  }

  get leading(): boolean {
    return this.isLeader;
  }

  start(callbacks: LeaderCallbacks): void {
    this.callbacks = callbacks;
    this.schedule(0);
  }

  /** Stops campaigning; a leader gives the lease up so another replica can take over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    await this.running;
    if (!this.isLeader) return;
    this.isLeader = false;
    try {
      const lease = await this.read();
      if (lease?.spec?.holderIdentity === this.options.identity) {
        lease.spec.holderIdentity = "";
        lease.spec.leaseDurationSeconds = 1;
        await this.options.client.replaceNamespacedLease({ name: this.options.name, namespace: this.options.namespace, body: lease });
      }
      this.options.logger.info("Released the leader lease", { lease: this.options.name });
    } catch (err) {
      this.options.logger.warn("Could not release the leader lease; it expires on its own", { error: apiMessage(err) });
    }
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = this.options.clock.setTimer(delayMs, () => {
      this.running = this.attempt().then(() => { this.schedule(this.retryPeriodMs); });
    });
  }

  private async attempt(): Promise<void> {
    let acquired = false;
    try {
      acquired = await this.tryAcquireOrRenew();
    } catch (err) {
      this.options.logger.warn("Leader election request failed", { lease: this.options.name, error: apiMessage(err) });
    }
    const now = this.options.clock.nowMs();
    if (acquired) {
      this.lastRenewMs = now;
      if (!this.isLeader) {
        this.isLeader = true;
        this.options.logger.info("Became the leader", { lease: this.options.name, identity: this.options.identity });
        this.callbacks?.onStartedLeading();
      }
    } else if (this.isLeader && now - this.lastRenewMs >= this.renewDeadlineMs) {
      this.isLeader = false;
      this.options.logger.warn("Lost the leader lease; stepping down", { lease: this.options.name, identity: this.options.identity });
      this.callbacks?.onStoppedLeading();
    }
  }

  private async read(): Promise<V1Lease | undefined> {
    try {
      return await this.options.client.readNamespacedLease({ name: this.options.name, namespace: this.options.namespace });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** One round: true when this replica holds the lease afterwards. */
  private async tryAcquireOrRenew(): Promise<boolean> {
    const { client, namespace, name, identity, clock } = this.options;
    const now = microTime(clock.nowMs());
    const durationSeconds = Math.max(1, Math.round(this.leaseDurationMs / 1000));
    const lease = await this.read();
    if (!lease) {
      try {
        await client.createNamespacedLease({ namespace, body: {
          metadata: { name, namespace },
          spec: { holderIdentity: identity, leaseDurationSeconds: durationSeconds, acquireTime: now, renewTime: now, leaseTransitions: 0 },
        } });
        return true;
      } catch (err) {
        if (isAlreadyExists(err)) return false;
        throw err;
      }
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? "";
    const record = `${holder}|${String(spec.renewTime ?? "")}`;
    if (this.observed?.record !== record) this.observed = { record, atMs: clock.nowMs() };
    const heldByOther = holder !== "" && holder !== identity;
    const duration = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    if (heldByOther && clock.nowMs() - this.observed.atMs < duration) return false;
    spec.holderIdentity = identity;
    spec.leaseDurationSeconds = durationSeconds;
    spec.renewTime = now;
    if (holder !== identity) {
      spec.acquireTime = now;
      spec.leaseTransitions = (spec.leaseTransitions ?? 0) + (holder === "" ? 0 : 1);
    }
    lease.spec = spec;
    try {
      await client.replaceNamespacedLease({ name, namespace, body: lease });
      return true;
    } catch (err) {
      // Someone else wrote the lease since it was read: they won this round.
      if (isConflict(err)) return false;
      throw err;
    }
  }
}

/**
 * A `metav1.MicroTime` (RFC 3339 with exactly six fractional digits, which the API server insists on). The client's
 * type says Date, but it passes strings through unchanged, and a Date would be sent with three digits.
 */
function microTime(ms: number): Date {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z") as unknown as Date;
}
