import type { Informer, KubeConfig, KubernetesObject, ObjectCache, V1Pod } from "@kubernetes/client-node";
import { KubeRaw } from "../../test/support/kube-raw.js";
import { LeanInformer, type RawObject } from "../../operator/src/kube/lean-informer.js";
import { percentile } from "./measure.js";

/**
 * A job's way through the systems, as the benchmark sees it: when Buildkite first listed it, reserved it and saw it
 * finish (the fake's clock), and when a watch first saw its record (a BuildkiteJob, or agent-stack-k8s's batch/v1
 * Job), its token Secret and its pod, the pod bound to a node, Running and deleted. Every time is this process's
 * `Date.now()`, the clock the fake uses too.
 */
export const MILESTONES = [
  "listed",
  "reserved",
  "record created",
  "token Secret",
  "pod created",
  "scheduled",
  "Running",
  "finished",
  "pod deleted",
] as const;
export type Milestone = (typeof MILESTONES)[number];

/** Milestone → job uuid → when it was first seen (ms). */
export type Trace = Map<Milestone, Map<string, number>>;

export const emptyTrace = (): Trace => new Map(MILESTONES.map((m) => [m, new Map<string, number>()]));

/** The job uuid a pod runs: our label, or agent-stack-k8s's env on any container. */
export function jobUuidOf(pod: V1Pod): string | undefined {
  const label = pod.metadata?.labels?.["buildkite.com/job-uuid"];
  if (label) return label;
  for (const c of [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])]) {
    const env = c.env?.find((e) => e.name === "BUILDKITE_AGENT_ACQUIRE_JOB")?.value;
    if (env) return env.toLowerCase();
    const i = c.args?.indexOf("--acquire-job") ?? -1;
    if (i >= 0 && c.args?.[i + 1]) return c.args[i + 1]?.toLowerCase();
  }
  return undefined;
}

/** The job uuid an object of the job's records is named for: `bkj-<uuid>`, `bkj-<uuid>-token`, `buildkite-<uuid>`. */
const UUID = /^(?:bkj|buildkite)-([0-9a-f-]{36})(?:-token)?$/;
export const uuidOfName = (name: string | undefined): string | undefined => UUID.exec(name ?? "")?.[1];

/**
 * What the trace keeps of a watched object: its name and uid, and for a pod the job it runs, its node and phase (a
 * BuildkiteJob's phase too). BuildkiteJobs, Jobs and Secrets are cached as only that.
 */
export interface Seen extends KubernetesObject {
  metadata: { name: string; namespace: string; uid: string };
  uuid: string | undefined;
  nodeName: string | undefined;
  phase: string | undefined;
}

const keep = (o: KubernetesObject & { spec?: unknown; status?: unknown }, uuid?: string): Seen => ({
  metadata: { name: o.metadata?.name ?? "", namespace: o.metadata?.namespace ?? "", uid: o.metadata?.uid ?? "" },
  uuid,
  nodeName: (o.spec as { nodeName?: string } | undefined)?.nodeName,
  phase: (o.status as { phase?: string } | undefined)?.phase,
});

/** What the watches saw; `podsPerJob` with more than one pod for a job is a duplicate run. */
export interface JobWatch {
  trace: Trace;
  podsPerJob: Map<string, Set<string>>;
  /**
   * The namespace's pods, whole but for their managed fields, for the fast runner to share: a job pod's events are
   * some kilobytes each, the largest part of the benchmark's own CPU when they were parsed once per watcher.
   */
  pods: Informer<V1Pod> & ObjectCache<V1Pod>;
  /** What the watches hold now, by kind. */
  current(kind: "pods" | "records" | "jobs" | "secrets"): readonly Seen[];
  stop(): Promise<void>;
}

/**
 * Watches the namespace's pods, BuildkiteJobs, batch/v1 Jobs and Secrets and stamps each job's milestones the first
 * time they are seen. A watch that fails goes on from where it was.
 */
export async function watchJobs(kc: KubeConfig, namespace: string): Promise<JobWatch> {
  const trace = emptyTrace();
  const podsPerJob = new Map<string, Set<string>>();
  const stamp = (m: Milestone, uuid: string | undefined, now: number): void => {
    const times = trace.get(m);
    if (uuid !== undefined && times && !times.has(uuid)) times.set(uuid, now);
  };
  const byName = (m: Milestone) => (o: Seen) => {
    stamp(m, uuidOfName(o.metadata.name), Date.now());
  };
  const state = { stopped: false };
  const kube = new KubeRaw(kc);
  const watch = <T extends KubernetesObject>(
    path: string,
    transform: (o: RawObject) => T,
    seen: (o: T) => void,
    gone: (o: T) => void = seen,
  ): LeanInformer<T> => {
    const informer = new LeanInformer<T>(kube, `/${path}`, { transform });
    informer.on("add", seen);
    informer.on("update", seen);
    informer.on("delete", gone);
    const restart = (): void => {
      setTimeout(() => {
        if (!state.stopped) informer.start().catch(restart);
      }, 500);
    };
    informer.on("error", restart);
    return informer;
  };
  const pods = watch<V1Pod>(
    `api/v1/namespaces/${namespace}/pods`,
    (o) => {
      delete o.metadata?.managedFields;
      return o;
    },
    (pod) => {
      const uuid = jobUuidOf(pod);
      if (!uuid) return;
      const now = Date.now();
      stamp("pod created", uuid, now);
      const set = podsPerJob.get(uuid) ?? new Set<string>();
      set.add(pod.metadata?.uid ?? "");
      podsPerJob.set(uuid, set);
      if (pod.spec?.nodeName) stamp("scheduled", uuid, now);
      if (pod.status?.phase === "Running") stamp("Running", uuid, now);
    },
    (pod) => {
      stamp("pod deleted", jobUuidOf(pod), Date.now());
    },
  );
  const others = [
    watch(`apis/buildkite.com/v1alpha1/namespaces/${namespace}/buildkitejobs`, keep, byName("record created")),
    watch(`apis/batch/v1/namespaces/${namespace}/jobs`, keep, byName("record created")),
    watch(`api/v1/namespaces/${namespace}/secrets`, keep, (o) => {
      if (o.metadata.name.endsWith("-token")) byName("token Secret")(o);
    }),
  ];
  // A CRD installed a moment ago answers 429 "storage is (re)initializing" for a while: the first list is retried.
  await Promise.all(
    [pods, ...others].map(async (i) => {
      for (let attempt = 1; ; attempt++) {
        try {
          await i.start();
          return;
        } catch (err) {
          if (attempt >= 60) throw err;
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    }),
  );
  const [records, jobs, secrets] = others;
  return {
    trace,
    podsPerJob,
    pods,
    current: (kind) =>
      kind === "pods"
        ? pods.list().map((p) => keep(p, jobUuidOf(p)))
        : ({ records, jobs, secrets }[kind]?.list() ?? []),
    stop: async () => {
      state.stopped = true;
      await Promise.all([pods, ...others].map((i) => i.stop()));
    },
  };
}

/** One milestone of a system's trace: how long after `scheduled_at` it came, and how long since the one before. */
export interface StageRow {
  milestone: Milestone;
  /** Jobs that reached it. */
  count: number;
  sinceScheduled: [p50: number, p99: number];
  /** Since the previous milestone in this system's own order (the first: since scheduled_at). */
  stage: [p50: number, p99: number];
  after: Milestone | "scheduled_at";
}

/**
 * The stages of a trace in the order the system goes through them (by median time): each job's time from one
 * milestone it reached to the next, with their median and p99. Milestones no job reached are left out.
 */
export function stages(trace: Trace, scheduledAt: ReadonlyMap<string, number>): StageRow[] {
  const offsets = MILESTONES.map((m) => {
    const times = trace.get(m) ?? new Map<string, number>();
    const lags = [...times].flatMap(([u, t]) => {
      const s = scheduledAt.get(u);
      return s === undefined ? [] : [t - s];
    });
    return { m, times, lags, median: percentile(lags, 50) };
  }).filter((o) => o.lags.length > 0);
  offsets.sort((a, b) => a.median - b.median || MILESTONES.indexOf(a.m) - MILESTONES.indexOf(b.m));
  return offsets.map((o, i) => {
    const before = offsets[i - 1];
    const stage = [...o.times].flatMap(([u, t]) => {
      const from = before ? before.times.get(u) : scheduledAt.get(u);
      return from === undefined ? [] : [t - from];
    });
    return {
      milestone: o.m,
      count: o.times.size,
      sinceScheduled: [o.median, percentile(o.lags, 99)],
      stage: [percentile(stage, 50), percentile(stage, 99)],
      after: before?.m ?? "scheduled_at",
    };
  });
}
