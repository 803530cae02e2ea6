import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { FakeControl, type FakeQueueView } from "./control.js";
import { dispatch } from "./dispatch.js";
import { Faults, type FaultSpec } from "./faults.js";
import { RateLimiter } from "./rate-limit.js";
import { RequestLog, type RequestLogEntry } from "./request-log.js";
import type { SeedJobOptions } from "./seed.js";
import type { JobState } from "./model.js";
import { FakeStore } from "./store.js";
import type { FakeAgentView, FakeJobRecord, FakeStackView } from "./views.js";

/** The agent token every fake starts with, unless {@link FakeBuildkiteOptions.agentToken} says otherwise. */
export const DEFAULT_AGENT_TOKEN = "bkct_fake_default";

/** Options for {@link FakeBuildkite.start}. */
export interface FakeBuildkiteOptions {
  /** Port to listen on (default 0: any free port). */
  readonly port?: number;
  /** Address to listen on (default 127.0.0.1; use 0.0.0.0 to serve containers). */
  readonly host?: string;
  /** Enforce the Stacks API rate limits with 429s (default false; switchable later with `setRateLimits`). */
  readonly rateLimits?: boolean;
  /** The default agent token's value (default {@link DEFAULT_AGENT_TOKEN}). */
  readonly agentToken?: string;
  /** Milliseconds since the epoch (default `Date.now`); reservation/JAT expiry, rate windows and liveness follow it. */
  readonly clock?: () => number;
  /** Silence after which an agent is lost and its job finished with exit -1 (default 30 s of the clock). */
  readonly agentLostAfterMs?: number;
}

/** Injected latency: real-time waits that {@link FakeBuildkite.stop} cuts short, so no timer outlives the fake. */
class Sleepers {
  readonly #pending = new Set<{ timer: NodeJS.Timeout; wake: () => void }>();

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const sleeper = {
        timer: setTimeout(() => {
          this.#pending.delete(sleeper);
          resolve();
        }, ms),
        wake: resolve,
      };
      this.#pending.add(sleeper);
    });
  }

  wakeAll(): void {
    for (const sleeper of this.#pending) {
      clearTimeout(sleeper.timer);
      sleeper.wake();
    }
    this.#pending.clear();
  }
}

/** How often the fake applies the passage of time without a request to prompt it (lost agents). */
const SWEEP_INTERVAL_MS = 1000;

/**
 * A fake Buildkite for tests: the Stacks API for the operator, the agent API for a real `buildkite-agent`, and a
 * test-control API under `/_fake` (reference `buildkite-api.md` §6). The typed helpers below call the same
 * {@link FakeControl} logic as the control API.
 */
export class FakeBuildkite {
  /** Base URL, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  /** What to give an agent as `BUILDKITE_AGENT_ENDPOINT` (and an operator as its endpoint): `url + "/v3"`. */
  readonly agentEndpoint: string;
  /** The default agent token (`bkct_fake_default` unless overridden). */
  readonly agentToken: string;
  readonly #server: Server;
  readonly #control: FakeControl;
  readonly #timer: NodeJS.Timeout;
  readonly #sleepers: Sleepers;

  private constructor(server: Server, url: string, agentToken: string, control: FakeControl, sleepers: Sleepers) {
    this.#server = server;
    this.#sleepers = sleepers;
    this.url = url;
    this.agentEndpoint = `${url}/v3`;
    this.agentToken = agentToken;
    this.#control = control;
    // Lost-agent detection must happen even when nobody calls; unref'd so the fake never holds a process open.
    this.#timer = setInterval(() => {
      control.sweep();
    }, SWEEP_INTERVAL_MS);
    this.#timer.unref();
  }

  /** Starts a fake listening on `host:port` and resolves once it accepts connections. */
  static async start(options: FakeBuildkiteOptions = {}): Promise<FakeBuildkite> {
    const clock = options.clock ?? Date.now;
    const agentToken = options.agentToken ?? DEFAULT_AGENT_TOKEN;
    const store = new FakeStore({ clock, agentToken, agentLostAfterMs: options.agentLostAfterMs ?? 30_000 });
    const faults = new Faults();
    const limiter = new RateLimiter(clock, options.rateLimits ?? false);
    const log = new RequestLog();
    const control = new FakeControl(store, faults, log, limiter);
    const sleepers = new Sleepers();
    const sleep = (ms: number): Promise<void> => sleepers.sleep(ms);
    const server = createServer((req, res) => {
      dispatch({ store, control, faults, limiter, log, sleep }, req, res).catch((err: unknown) => {
        // dispatch answers every error itself; reaching here means the socket broke mid-answer.
        res.destroy(err instanceof Error ? err : new Error(String(err)));
      });
    });
    // Outlast Go's 90 s idle-connection timeout: a server closing an idle connection just as the agent reuses it
    // surfaces as EOF errors and retries. stop() closes connections itself, so long keep-alives never delay it.
    server.keepAliveTimeout = 120_000;
    server.headersTimeout = 130_000;
    const host = options.host ?? "127.0.0.1";
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 0, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const { port } = server.address() as AddressInfo;
    const shownHost = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host.includes(":") ? `[${host}]` : host;
    return new FakeBuildkite(server, `http://${shownHost}:${port}`, agentToken, control, sleepers);
  }

  /** Stops listening, drops open connections and clears every timer. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#sleepers.wakeAll();
    const closed = new Promise<void>((resolve) => {
      this.#server.close(() => {
        resolve();
      });
    });
    this.#server.closeAllConnections();
    await closed;
  }

  /** Seeds a job (§6.6) and returns its uuid. */
  seedJob(options: SeedJobOptions = {}): string {
    return this.#control.seedJob(options).id;
  }

  /** A job's full record: state, outcome, assembled log, notifications and state history. Throws for an unknown uuid. */
  job(uuid: string): FakeJobRecord {
    return this.#control.job(uuid);
  }

  /** A job's state alone, without building its record (log, history): for polling many jobs. */
  jobState(uuid: string): JobState {
    return this.#control.jobState(uuid);
  }

  jobs(): FakeJobRecord[] {
    return this.#control.jobs();
  }

  /** Cancels a job: `canceled` at once if no agent has it, else `canceling` until the agent finishes it. */
  cancel(uuid: string): FakeJobRecord {
    return this.#control.cancel(uuid);
  }

  /** Times a running job out (`timing_out`). */
  timeout(uuid: string): FakeJobRecord {
    return this.#control.timeout(uuid);
  }

  /** Releases a locked job to `scheduled`. */
  unlock(uuid: string): FakeJobRecord {
    return this.#control.unlock(uuid);
  }

  /** Expires a scheduled job. */
  expire(uuid: string): FakeJobRecord {
    return this.#control.expire(uuid);
  }

  pauseQueue(key: string): FakeQueueView {
    return this.#control.pauseQueue(key);
  }

  resumeQueue(key: string): FakeQueueView {
    return this.#control.resumeQueue(key);
  }

  /** Creates an agent token (random `bkct_…` unless given) and returns its value. */
  createToken(options: { readonly token?: string; readonly description?: string } = {}): string {
    return this.#control.createToken(options);
  }

  revokeToken(token: string): void {
    this.#control.revokeToken(token);
  }

  /** Registered agents (no session tokens). */
  agents(): FakeAgentView[] {
    return this.#control.agents();
  }

  /** Registered stacks. */
  stacks(): FakeStackView[] {
    return this.#control.stacks();
  }

  pauseAgent(uuid: string, paused = true): void {
    this.#control.pauseAgent(uuid, paused);
  }

  stopAgent(uuid: string): void {
    this.#control.stopAgent(uuid);
  }

  /** The API requests seen so far, oldest first; token classes, never token values. */
  requests(): RequestLogEntry[] {
    return this.#control.requests();
  }

  clearRequests(): void {
    this.#control.clearRequests();
  }

  /** Arms a fault for the next `count` requests to a route (429/5xx/HTML body/latency). */
  injectFault(spec: FaultSpec): void {
    this.#control.injectFault(spec);
  }

  clearFaults(): void {
    this.#control.clearFaults();
  }

  setRateLimits(enabled: boolean): void {
    this.#control.setRateLimits(enabled);
  }

  /** Applies the clock now (expiry, lost agents); requests do this too, so tests rarely need it. */
  sweep(): void {
    this.#control.sweep();
  }
}

export type { FaultSpec } from "./faults.js";
export type { FakeQueueView } from "./control.js";
export type { RequestLogEntry } from "./request-log.js";
export type { SeedJobOptions } from "./seed.js";
export type { FakeAgentView, FakeJobRecord, FakeStackView } from "./views.js";
