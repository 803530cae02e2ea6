import { Observable, type ConfigurationOptions, type CoordinationV1Api, type V1Lease } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { Clock, Timer } from "./clock.js";
import { isConflict, isNotFound, isAlreadyExists, apiMessage } from "./field-manager.js";

/** The Lease requests the elector makes; `options` carries the abort signal of each request's timeout. */
export type LeaseClient = Pick<
  CoordinationV1Api,
  "readNamespacedLease" | "createNamespacedLease" | "replaceNamespacedLease"
>;

export interface LeaderElectionOptions {
  client: LeaseClient;
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
  /** The longest one Lease request may take (default half the renew deadline, at least 1 s, as client-go's lock). */
  requestTimeoutMs?: number;
}

export interface LeaderCallbacks {
  onStartedLeading(): void;
  onStoppedLeading(): void;
}

/** The outcome of one acquire-or-renew round. */
interface Round {
  /** This replica holds the lease now. */
  acquired: boolean;
  /** Another replica holds it, and it has not expired yet. */
  takenBy?: string;
  /** When that holder's lease would expire, on this replica's clock. */
  expiresInMs?: number;
}

/** A Lease request that did not answer in time; it was aborted, and counts as a failed renewal. */
export class LeaseTimeoutError extends Error {
  override readonly name = "LeaseTimeoutError";
}

/**
 * Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it: the holder renews the
 * lease every retry period; the others take it once it has not changed for a whole lease duration, measured on
 * their own clock from when they last saw it change (so clock skew between nodes does not matter). Writes use the
 * lease's resourceVersion, so two replicas can never both win.
 *
 * A leader acts only while {@link LeaderElector.mayAct} says so: its last renewal is younger than the renew deadline,
 * which is shorter than the lease, so it stops before any standby may take over. Every Lease request is aborted when
 * it outlives its timeout, and never outlives the leader's renew deadline.
 */
export class LeaderElector {
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly requestTimeoutMs: number;
  private timer: Timer | undefined;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;
  private isLeader = false;
  /** When the attempt that last renewed began: the renewTime it wrote, so the deadline errs on the early side. */
  private lastRenewMs = 0;
  /** The last lease record seen (holder and renew time), and when it was first seen on this clock. */
  private observed: { record: string; atMs: number } | undefined;
  private callbacks: LeaderCallbacks | undefined;

  constructor(private readonly options: LeaderElectionOptions) {
    this.leaseDurationMs = options.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = options.renewDeadlineMs ?? Math.round((this.leaseDurationMs * 2) / 3);
    this.retryPeriodMs = options.retryPeriodMs ?? Math.round(this.leaseDurationMs / 7.5);
    this.requestTimeoutMs = options.requestTimeoutMs ?? Math.max(1000, Math.round(this.renewDeadlineMs / 2));
  }

  get leading(): boolean {
    return this.isLeader;
  }

  /**
   * Whether this replica may act now: it leads and renewed within the renew deadline, read on the clock at the moment
   * of the call. A process paused for longer than that (SIGSTOP, a stalled VM) gets false from its first instruction
   * after waking, before any of its timers has run. Once false while leading it stays false: the elector steps down.
   */
  mayAct(): boolean {
    return this.isLeader && this.options.clock.nowMs() - this.lastRenewMs < this.renewDeadlineMs;
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
    const { client, name, namespace, identity, logger } = this.options;
    try {
      const lease = await this.read(this.requestTimeoutMs);
      if (lease?.spec?.holderIdentity === identity) {
        lease.spec.holderIdentity = "";
        lease.spec.leaseDurationSeconds = 1;
        await this.bounded(this.requestTimeoutMs, (o) =>
          client.replaceNamespacedLease({ name, namespace, body: lease }, o),
        );
      }
      logger.info("Released the leader lease", { lease: name });
    } catch (err) {
      logger.warn("Could not release the leader lease; it expires on its own", { error: apiMessage(err) });
    }
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = this.options.clock.setTimer(delayMs, () => {
      this.running = this.attempt().then((next) => {
        this.schedule(next);
      });
    });
  }

  /** One round of acquire-or-renew; resolves to the delay before the next. */
  private async attempt(): Promise<number> {
    const { clock, logger, name, identity } = this.options;
    const started = clock.nowMs();
    let result: Round = { acquired: false };
    // A leader past its deadline (it was paused, or its requests kept failing) sends nothing more: it steps down.
    if (!this.isLeader || this.mayAct()) {
      try {
        result = await this.tryAcquireOrRenew(started);
      } catch (err) {
        logger.warn("Leader election request failed", { lease: name, error: apiMessage(err) });
      }
    }
    // A renewal counts only if it came back within the renew deadline of its start, and of the last one: a late
    // answer never makes a leader that already had to stop think it may act again.
    const inTime = clock.nowMs() - started < this.renewDeadlineMs && (!this.isLeader || this.mayAct());
    if (result.acquired && inTime) {
      this.lastRenewMs = started;
      if (!this.isLeader) {
        this.isLeader = true;
        logger.info("Became the leader", { lease: name, identity });
        this.callbacks?.onStartedLeading();
      }
    } else if (this.isLeader && (result.takenBy !== undefined || !this.mayAct())) {
      this.isLeader = false;
      // Like client-go's Run, a replica that lost the lease does not campaign again: it restarts clean instead.
      this.stopped = true;
      logger.warn("Lost the leader lease; stepping down", {
        lease: name,
        identity,
        ...(result.takenBy !== undefined ? { holder: result.takenBy } : {}),
      });
      this.callbacks?.onStoppedLeading();
    }
    // A standby tries again the moment the lease it watches would expire, not up to a retry period later.
    return Math.max(0, Math.min(this.retryPeriodMs, result.expiresInMs ?? this.retryPeriodMs));
  }

  /** The longest the next request may take: its timeout, and for a leader never past its renew deadline. */
  private requestLimitMs(): number {
    if (!this.isLeader) return this.requestTimeoutMs;
    return Math.min(this.requestTimeoutMs, this.lastRenewMs + this.renewDeadlineMs - this.options.clock.nowMs());
  }

  /**
   * Sends one request with an abort signal that fires after `limitMs` on the injected clock. The request is really
   * aborted (undici drops it), and the promise rejects at the limit even if the client ignores the signal, so a late
   * answer can never be taken for a renewal.
   */
  private async bounded<T>(limitMs: number, send: (options: ConfigurationOptions) => Promise<T>): Promise<T> {
    const error = new LeaseTimeoutError(
      `Lease request to ${this.options.namespace}/${this.options.name} took longer than ${Math.max(0, limitMs)} ms`,
    );
    if (limitMs <= 0) throw error;
    const abort = new AbortController();
    let timer: Timer | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = this.options.clock.setTimer(limitMs, () => {
        abort.abort(error);
        reject(error);
      });
    });
    try {
      return await Promise.race([send(withSignal(abort.signal)), timeout]);
    } finally {
      timer?.cancel();
    }
  }

  private async read(limitMs: number): Promise<V1Lease | undefined> {
    const { client, name, namespace } = this.options;
    try {
      return await this.bounded(limitMs, (o) => client.readNamespacedLease({ name, namespace }, o));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** One round: whether this replica holds the lease afterwards, or who does and when that would expire. */
  private async tryAcquireOrRenew(startedMs: number): Promise<Round> {
    const { client, namespace, name, identity, clock } = this.options;
    const now = microTime(startedMs);
    const durationSeconds = Math.max(1, Math.round(this.leaseDurationMs / 1000));
    const lease = await this.read(this.requestLimitMs());
    if (!lease) {
      try {
        await this.bounded(this.requestLimitMs(), (o) =>
          client.createNamespacedLease(
            {
              namespace,
              body: {
                metadata: { name, namespace },
                spec: {
                  holderIdentity: identity,
                  leaseDurationSeconds: durationSeconds,
                  acquireTime: now,
                  renewTime: now,
                  leaseTransitions: 0,
                },
              },
            },
            o,
          ),
        );
        return { acquired: true };
      } catch (err) {
        if (isAlreadyExists(err)) return { acquired: false };
        throw err;
      }
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? "";
    const record = `${holder}|${String(spec.renewTime ?? "")}`;
    if (this.observed?.record !== record) this.observed = { record, atMs: clock.nowMs() };
    const heldByOther = holder !== "" && holder !== identity;
    const duration = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    const expiresInMs = this.observed.atMs + duration - clock.nowMs();
    if (heldByOther && expiresInMs > 0) return { acquired: false, expiresInMs, takenBy: holder };
    spec.holderIdentity = identity;
    spec.leaseDurationSeconds = durationSeconds;
    spec.renewTime = now;
    if (holder !== identity) {
      spec.acquireTime = now;
      spec.leaseTransitions = (spec.leaseTransitions ?? 0) + (holder === "" ? 0 : 1);
    }
    lease.spec = spec;
    try {
      await this.bounded(this.requestLimitMs(), (o) =>
        client.replaceNamespacedLease({ name, namespace, body: lease }, o),
      );
      return { acquired: true };
    } catch (err) {
      // Someone else wrote the lease since it was read: they won this round.
      if (isConflict(err)) return { acquired: false };
      throw err;
    }
  }
}

/**
 * Per-call options that hand `signal` to the request: client-node 2.x passes a RequestContext's signal to undici's
 * fetch, and per-call middleware (appended to the client's own) is the only way to set it.
 */
function withSignal(signal: AbortSignal): ConfigurationOptions {
  return {
    middleware: [
      {
        pre: (context) => {
          context.setSignal(signal);
          return new Observable(Promise.resolve(context));
        },
        post: (response) => new Observable(Promise.resolve(response)),
      },
    ],
    middlewareMergeStrategy: "append",
  };
}

/**
 * A `metav1.MicroTime` (RFC 3339 with exactly six fractional digits, which the API server insists on). The client's
 * type says Date, but it passes strings through unchanged, and a Date would be sent with three digits.
 */
function microTime(ms: number): Date {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z") as unknown as Date;
}
