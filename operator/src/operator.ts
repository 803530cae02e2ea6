import { KubeConfig, KubernetesObjectApi } from "@kubernetes/client-node";
import type { Logger } from "winston";
import { JobController } from "./job/controller.js";
import { realClock, type Clock } from "./kube/clock.js";
import type { ControllerContext } from "./kube/controller.js";
import { EventRecorder } from "./kube/event-recorder.js";
import { Expectations } from "./kube/expectations.js";
import { createInformers, type InformerSet } from "./kube/informers.js";
import { LeaderElector } from "./kube/leader-election.js";
import { leanClients } from "./kube/lean-client.js";
import { guardWrites } from "./kube/write-guard.js";
import { Metrics } from "./observability/metrics.js";
import type { Registry } from "prom-client";
import { WorkQueue } from "./kube/work-queue.js";
import {
  CredentialsPreflight,
  DEFAULT_CREDENTIALS_SETTINGS,
  type CredentialsSettings,
} from "./aws/credentials-preflight.js";
import { NO_SIDES, QueueController } from "./queue/controller.js";
import { AgentTokenReader } from "./queue/agent-token.js";
import { DEFAULT_JOB_SOURCE_SETTINGS, type JobSourceSettings } from "./queue/job-source.js";
import { JobSources } from "./queue/job-sources.js";
import { DEFAULT_START_TIMEOUTS, type StartTimeouts } from "./job/stuck.js";
import {
  BUILDKITE_AGENT_ENDPOINT,
  DEFAULT_CLUSTER_DNS,
  normalizeEndpoint,
  parseDnsPeer,
  type DnsPeer,
} from "./config/config.js";
import {
  clusterUid,
  copyOf,
  countRequests,
  informerProblem,
  leaderElector,
  reuseConnections,
  wire,
  workQueueFor,
} from "./wiring.js";

export interface OperatorOptions {
  kubeConfig: KubeConfig;
  logger: Logger;
  clock?: Clock;
  /** Concurrent reconciles per controller (a key is never handled by two at once). */
  workers?: number;
  /** How long start-up waits for the informers' first lists. */
  syncTimeoutMs?: number;
  /**
   * Taking jobs from Buildkite's Stacks API (on unless `false`). `clusterId` tells this cluster's stacks apart from
   * other clusters'; by default it is the uid of the kube-system namespace.
   */
  buildkite?: false | Partial<JobSourceSettings>;
  /** When a job pod that has not started counts as stuck. */
  timeouts?: Partial<StartTimeouts>;
  /** The AWS credentials preflight (STS endpoint, re-check interval). */
  credentials?: Partial<CredentialsSettings>;
  /** Only the replica holding this lease acts. */
  leaderElection?: LeaderElectionSettings;
  /** Where the metrics are registered (default a fresh registry); `/metrics` serves it. */
  registry?: Registry;
  /** Agent API endpoints a queue may send its token to (default Buildkite's, `BUILDKITE_AGENT_ENDPOINT` of config.ts). */
  allowedEndpoints?: readonly string[];
  /** The resolvers job pods may query when their queue names none (default kube-system's kube-dns pods). */
  clusterDNS?: DnsPeer;
  /**
   * Namespaces served and watched, each by its own informers (a Role in each is enough); queues elsewhere are never
   * seen. Empty or absent: every namespace, through cluster-wide informers (which need a ClusterRole).
   */
  watchNamespaces?: readonly string[];
}

/** Leader election settings; without them every replica acts (fine for one replica, and for tests). */
export interface LeaderElectionSettings {
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  /** Called when this replica loses the lease after leading: `main.ts` exits so the pod restarts clean. */
  onLost?: () => void;
}

/**
 * The running operator: informers feeding two controllers through their work queues, and a job source per queue.
 * Informers run on every replica (a standby is warm and ready); controllers and job sources run only on the leader.
 * Started by `main.ts`, and in-process by the integration tests.
 */
export class Operator {
  private acting = false;
  /** Resolves when everything stopped by `stopActing` has finished what it was doing. */
  private drained: Promise<void> = Promise.resolve();

  private constructor(
    private readonly informers: InformerSet,
    private readonly work: { queue: WorkQueue; start(workers: number): void }[],
    private readonly workers: number,
    private readonly namespaces: string,
    private readonly recorder: EventRecorder,
    private readonly sources: JobSources | undefined,
    private readonly credentials: CredentialsPreflight,
    private readonly elector: LeaderElector | undefined,
    readonly metrics: Metrics,
    private readonly logger: Logger,
  ) {}

  static async start(options: OperatorOptions): Promise<Operator> {
    const { logger } = options;
    // A copy, so counting and guarding its requests does not touch the caller's KubeConfig.
    const kc = copyOf(options.kubeConfig);
    const clock = options.clock ?? realClock;
    // The hot requests (pods, Secrets, Events, BuildkiteJobs) take the lean path; the hooks added to `kc` below
    // still see each of them.
    const { core, custom } = leanClients(kc);
    const clients = { core, custom, objects: KubernetesObjectApi.makeApiClient(kc) };
    const recorder = new EventRecorder({ core: clients.core, component: "buildkite-operator", clock, logger });
    const informers = createInformers(kc, clock, logger, options.watchNamespaces);
    const work: { queue: WorkQueue; start(workers: number): void }[] = [];
    const metrics = new Metrics(options.registry, {
      workQueues: () => work.map((w) => ({ name: w.queue.name, value: () => w.queue.length })),
      informerRestarts: () => informers.all.map((i) => ({ name: i.name, value: () => i.restarts })),
    });
    countRequests(kc, metrics);
    reuseConnections(kc);
    const le = options.leaderElection;
    const elector = le ? leaderElector(le, options.kubeConfig, clock, logger, metrics) : undefined;
    const mayAct = (): boolean => elector?.mayAct() ?? true;
    guardWrites(kc, mayAct);
    const allowedEndpoints = (options.allowedEndpoints ?? [BUILDKITE_AGENT_ENDPOINT]).map(normalizeEndpoint);
    const cacheProblem = (): string | undefined => informerProblem(informers);
    const ctx: ControllerContext = {
      clients,
      caches: informers.caches,
      clock,
      logger,
      recorder,
      metrics,
      cacheProblem,
      expectations: new Expectations(clock),
      mayAct,
    };
    const tokens = new AgentTokenReader(clients, clock, allowedEndpoints);
    // The queue work queue exists before the job sources, which enqueue a queue when its Buildkite conditions change.
    let enqueueQueue: (key: string) => void = () => undefined;
    const sources =
      options.buildkite === false
        ? undefined
        : new JobSources(
            ctx,
            tokens,
            {
              ...DEFAULT_JOB_SOURCE_SETTINGS,
              clusterId: options.buildkite?.clusterId ?? (await clusterUid(clients.core)),
              onRequest: (r) => {
                metrics.apiRequest(r);
              },
              ...options.buildkite,
              allowedEndpoints,
            },
            (key) => {
              enqueueQueue(key);
            },
          );
    const credentials = new CredentialsPreflight(
      ctx,
      { ...DEFAULT_CREDENTIALS_SETTINGS, ...options.credentials },
      (key) => {
        enqueueQueue(key);
      },
    );
    const queueController = new QueueController(
      ctx,
      { clusterDNS: options.clusterDNS ?? parseDnsPeer(DEFAULT_CLUSTER_DNS), allowedEndpoints },
      {
        tokens,
        buildkite: sources ?? NO_SIDES.buildkite,
        credentials,
      },
    );
    const queueWork = workQueueFor(queueController, ctx);
    enqueueQueue = (key) => {
      queueWork.queue.add(key);
    };
    const jobWork = workQueueFor(new JobController(ctx, { ...DEFAULT_START_TIMEOUTS, ...options.timeouts }), ctx);
    work.push(queueWork, jobWork);
    wire(informers, queueWork.queue, jobWork.queue);
    await Promise.all(informers.all.map((i) => i.start()));
    await Promise.all(informers.all.map((i) => i.waitForSync(options.syncTimeoutMs ?? 60_000)));
    const namespaces = options.watchNamespaces?.length ? options.watchNamespaces.join(",") : "all";
    const operator = new Operator(
      informers,
      work,
      options.workers ?? 16,
      namespaces,
      recorder,
      sources,
      credentials,
      elector,
      metrics,
      logger,
    );
    informers.listeners.queues.add(() => {
      if (!operator.acting) return;
      sources?.sync();
      credentials.sync();
    });
    informers.listeners.jobs.add((job) => {
      if (operator.acting) sources?.jobChanged(job);
    });
    if (elector) {
      metrics.setLeader(false);
      logger.info("Waiting for the leader lease", {
        lease: `${le?.namespace ?? ""}/${le?.name ?? ""}`,
        identity: le?.identity,
      });
      elector.start({
        onStartedLeading: () => {
          operator.act();
        },
        onStoppedLeading: () => {
          metrics.setLeader(false);
          // Nothing waits for the job sources to drain (their Buildkite retries can take minutes): the work they
          // still try is refused, and main.ts exits.
          operator.stopActing();
          le?.onLost?.();
        },
      });
    } else {
      operator.act();
    }
    return operator;
  }

  /** Whether this replica runs the controllers (it leads, or runs without leader election). */
  get leading(): boolean {
    return this.acting;
  }

  private act(): void {
    if (this.acting) return;
    this.acting = true;
    this.metrics.setLeader(true);
    for (const w of this.work) w.start(this.workers);
    this.sources?.sync();
    this.credentials.sync();
    this.logger.info("Started controllers", {
      workers: this.workers,
      namespaces: this.namespaces,
      buildkite: this.sources !== undefined,
    });
  }

  /**
   * Stops acting at once: the work queues hand out no more keys, then the job sources and credentials checks stop
   * scheduling work. What is already under way finishes on its own (`drained`); once the lease is gone its writes are
   * refused.
   */
  private stopActing(): void {
    if (!this.acting) return;
    this.acting = false;
    const queues = this.work.map((w) => w.queue.shutdown());
    this.drained = Promise.all([...queues, this.sources?.stop(), this.credentials.stop()]).then(() => undefined);
  }

  /** Undefined when ready: every informer synced and fresh (feeds /readyz); otherwise why not. */
  notReady(): string | undefined {
    return informerProblem(this.informers);
  }

  /** Ready when every informer has synced and is not stale. */
  healthy(): boolean {
    return this.notReady() === undefined;
  }

  /** Stops taking work, lets in-flight reconciles finish, flushes Events, gives up the lease, stops the informers. */
  async stop(): Promise<void> {
    this.stopActing();
    await this.drained;
    await Promise.all(this.work.map((w) => w.queue.shutdown()));
    // Flushed while still leading: afterwards its writes would be refused.
    await this.recorder.flush();
    await this.elector?.stop();
    await Promise.all(this.informers.all.map((i) => i.stop()));
    this.logger.info("Stopped controllers");
  }
}
