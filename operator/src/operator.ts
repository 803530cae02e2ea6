import { CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubeConfig, KubernetesObjectApi, type KubernetesObject } from "@kubernetes/client-node";
import type { Logger } from "winston";
import type { BuildkiteJob } from "./api/generated/buildkite-job.js";
import { LABELS } from "./api/keys.js";
import { JobController } from "./job/controller.js";
import { isTerminal } from "./job/phase.js";
import { realClock, type Clock } from "./kube/clock.js";
import type { Controller, ControllerContext } from "./kube/controller.js";
import { EventRecorder } from "./kube/event-recorder.js";
import { Expectations } from "./kube/expectations.js";
import { createInformers, type InformerSet } from "./kube/informers.js";
import { LeaderElector } from "./kube/leader-election.js";
import { guardWrites, NotLeaderError } from "./kube/write-guard.js";
import { keyOf } from "./kube/resources.js";
import { Metrics } from "./observability/metrics.js";
import type { Registry } from "prom-client";
import { WorkQueue } from "./kube/work-queue.js";
import { CredentialsPreflight, DEFAULT_CREDENTIALS_SETTINGS, type CredentialsSettings } from "./aws/credentials-preflight.js";
import { NO_SIDES, QueueController } from "./queue/controller.js";
import { AgentTokenReader } from "./queue/agent-token.js";
import { DEFAULT_JOB_SOURCE_SETTINGS, type JobSourceSettings } from "./queue/job-source.js";
import { JobSources } from "./queue/job-sources.js";
import { DEFAULT_START_TIMEOUTS, type StartTimeouts } from "./job/stuck.js";
import { BUILDKITE_AGENT_ENDPOINT, DEFAULT_CLUSTER_DNS, normalizeEndpoint, parseDnsPeer, type DnsPeer } from "./config/config.js";

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
  buildkite?: false | (Partial<JobSourceSettings>);
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
    const clients = { core: kc.makeApiClient(CoreV1Api), custom: kc.makeApiClient(CustomObjectsApi), objects: KubernetesObjectApi.makeApiClient(kc) };
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
    const ctx: ControllerContext = { clients, caches: informers.caches, clock, logger, recorder, metrics, cacheProblem, expectations: new Expectations(clock), mayAct };
    const tokens = new AgentTokenReader(clients, clock, allowedEndpoints);
    // The queue work queue exists before the job sources, which enqueue a queue when its Buildkite conditions change.
    let enqueueQueue: (key: string) => void = () => undefined;
    const sources = options.buildkite === false ? undefined : new JobSources(ctx, tokens, {
      ...DEFAULT_JOB_SOURCE_SETTINGS,
      clusterId: options.buildkite?.clusterId ?? await clusterUid(clients.core),
      onRequest: (r) => { metrics.apiRequest(r); },
      ...options.buildkite,
      allowedEndpoints,
    }, (key) => { enqueueQueue(key); });
    const credentials = new CredentialsPreflight(ctx, { ...DEFAULT_CREDENTIALS_SETTINGS, ...options.credentials }, (key) => { enqueueQueue(key); });
    const queueController = new QueueController(ctx, { clusterDNS: options.clusterDNS ?? parseDnsPeer(DEFAULT_CLUSTER_DNS), allowedEndpoints }, {
      tokens, buildkite: sources ?? NO_SIDES.buildkite, credentials,
    });
    const queueWork = workQueueFor(queueController, ctx);
    enqueueQueue = (key) => { queueWork.queue.add(key); };
    const jobWork = workQueueFor(new JobController(ctx, { ...DEFAULT_START_TIMEOUTS, ...options.timeouts }), ctx);
    work.push(queueWork, jobWork);
    wire(informers, queueWork.queue, jobWork.queue);
    await Promise.all(informers.all.map((i) => i.start()));
    await Promise.all(informers.all.map((i) => i.waitForSync(options.syncTimeoutMs ?? 60_000)));
    const namespaces = options.watchNamespaces?.length ? options.watchNamespaces.join(",") : "all";
    const operator = new Operator(informers, work, options.workers ?? 16, namespaces, recorder, sources, credentials, elector, metrics, logger);
    informers.listeners.queues.add(() => {
      if (!operator.acting) return;
      sources?.sync();
      credentials.sync();
    });
    if (elector) {
      metrics.setLeader(false);
      logger.info("Waiting for the leader lease", { lease: `${le?.namespace ?? ""}/${le?.name ?? ""}`, identity: le?.identity });
      elector.start({
        onStartedLeading: () => { operator.act(); },
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
    this.logger.info("Started controllers", { workers: this.workers, namespaces: this.namespaces, buildkite: this.sources !== undefined });
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

function workQueueFor(controller: Controller, ctx: ControllerContext): { queue: WorkQueue; start(workers: number): void } {
  const { clock, logger, metrics, mayAct } = ctx;
  const queue = new WorkQueue({
    name: controller.name,
    clock,
    startProblem: () => mayAct?.() === false ? new NotLeaderError(`not the leader: did not start a ${controller.name} reconcile`) : undefined,
    onDone: ({ key, error, retries, durationMs }) => {
      metrics.reconciled(controller.name, durationMs, error !== undefined);
      if (error !== undefined) {
        logger.warn("Reconcile failed; retrying with backoff", { controller: controller.name, key, retries, error: describeError(error) });
      }
    },
  });
  return { queue, start: (workers) => { queue.start(workers, (key) => controller.reconcile(key)); } };
}

/** Maps every change to the keys it concerns. Callbacks only enqueue; the reconcilers read the caches. */
function wire(informers: InformerSet, queueWork: WorkQueue, jobWork: WorkQueue): void {
  const { caches, listeners } = informers;
  const queueKey = (namespace: string | undefined, name: string | undefined): string => `${namespace ?? ""}/${name ?? ""}`;
  // Jobs of a queue that are not terminal: they wait on the queue's readiness or for a free slot.
  const wakeJobs = (namespace: string | undefined, queue: string | undefined): void => {
    for (const job of caches.jobs.list(namespace)) {
      if (job.spec.queueRef.name === queue && !isTerminal(job.status?.phase) && job.status?.podUID === undefined) jobWork.add(keyOf(job));
    }
  };
  const byQueueLabel = (o: KubernetesObject): void => {
    const queue = o.metadata?.labels?.[LABELS.queue];
    if (queue) queueWork.add(queueKey(o.metadata?.namespace, queue));
  };

  listeners.queues.add((q) => {
    queueWork.add(keyOf(q));
    wakeJobs(q.metadata.namespace, q.metadata.name);
  });
  listeners.jobs.add((j: BuildkiteJob) => {
    jobWork.add(keyOf(j));
    queueWork.add(queueKey(j.metadata.namespace, j.spec.queueRef.name));
    wakeJobs(j.metadata.namespace, j.spec.queueRef.name);
  });
  listeners.pods.add((p) => {
    const job = p.metadata?.labels?.[LABELS.job];
    if (job) jobWork.add(queueKey(p.metadata?.namespace, job));
    wakeJobs(p.metadata?.namespace, p.metadata?.labels?.[LABELS.queue]);
  });
  listeners.serviceAccounts.add(byQueueLabel);
  listeners.networkPolicies.add(byQueueLabel);
  listeners.claims.add(byQueueLabel);
}

/** A copy of `kc` that can be hooked without touching the original. */
function copyOf(kc: KubeConfig): KubeConfig {
  const copy = new KubeConfig();
  copy.loadFromOptions({ clusters: kc.clusters, users: kc.users, contexts: kc.contexts, currentContext: kc.currentContext });
  return copy;
}

/** The elector, on a KubeConfig of its own: its Lease requests are counted, but never refused by the write guard. */
function leaderElector(le: LeaderElectionSettings, kubeConfig: KubeConfig, clock: Clock, logger: Logger, metrics: Metrics): LeaderElector {
  const kc = copyOf(kubeConfig);
  countRequests(kc, metrics);
  reuseConnections(kc);
  return new LeaderElector({
    client: kc.makeApiClient(CoordinationV1Api), namespace: le.namespace, name: le.name, identity: le.identity, clock, logger,
    ...(le.leaseDurationMs !== undefined ? { leaseDurationMs: le.leaseDurationMs } : {}),
  });
}

/** Counts every Kubernetes API request (each passes through the KubeConfig's authentication) in the metrics. */
function countRequests(kc: KubeConfig, metrics: Metrics): void {
  const authenticate = kc.applySecurityAuthentication.bind(kc);
  kc.applySecurityAuthentication = async (context) => {
    metrics.kubernetesRequest(context.getHttpMethod());
    await authenticate(context);
  };
}

/**
 * client-node 2.x builds a new undici Agent for every request, so every request opens (and TLS-handshakes) a new
 * connection: most of the operator's CPU, and the API server's, went there under load. One dispatcher per KubeConfig
 * (one cluster, one user) keeps connections alive. Client certificates are read once; bearer tokens are headers and
 * still refresh per request.
 */
function reuseConnections(kc: KubeConfig): void {
  const patched = kc as unknown as { createDispatcher(cluster: unknown, options: unknown): unknown };
  const create = patched.createDispatcher.bind(kc);
  let shared: unknown;
  patched.createDispatcher = (cluster, options) => (shared ??= create(cluster, options));
}

/** The uid of the kube-system namespace: stable for a cluster's life and different in every cluster. */
async function clusterUid(core: CoreV1Api): Promise<string> {
  const ns = await core.readNamespace({ name: "kube-system" });
  return ns.metadata?.uid ?? "unknown-cluster";
}

/** Why the informers' caches cannot be trusted now (not synced, failed or stale), or undefined. */
function informerProblem(informers: InformerSet): string | undefined {
  const unhealthy = informers.all.filter((i) => !i.healthy()).map((i) => i.name);
  return unhealthy.length === 0 ? undefined : `informers not synced or stale: ${unhealthy.join(", ")}`;
}

function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error);
}
