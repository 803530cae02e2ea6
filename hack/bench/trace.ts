import { makeInformer, type KubeConfig, type KubernetesObject, type V1Pod } from "@kubernetes/client-node";
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

/** What the watches saw; `podsPerJob` with more than one pod for a job is a duplicate run. */
export interface JobWatch {
  trace: Trace;
  podsPerJob: Map<string, Set<string>>;
  /** What the watches hold now, by kind. */
  current(kind: "pods" | "records" | "jobs" | "secrets"): readonly KubernetesObject[];
  stop(): Promise<void>;
}

interface Watched<T extends KubernetesObject> {
  path: string;
  list: () => Promise<{ items: T[] }>;
  seen: (obj: T, now: number) => void;
  gone?: (obj: T, now: number) => void;
}

/**
 * Watches the namespace's pods, BuildkiteJobs, batch/v1 Jobs and Secrets and stamps each job's milestones the first
 * time they are seen. Informers restart on error (a watch that ends is relisted).
 */
export async function watchJobs(
  kc: KubeConfig,
  namespace: string,
  lists: {
    pods: () => Promise<{ items: V1Pod[] }>;
    records: () => Promise<{ items: KubernetesObject[] }>;
    jobs: () => Promise<{ items: KubernetesObject[] }>;
    secrets: () => Promise<{ items: KubernetesObject[] }>;
  },
): Promise<JobWatch> {
  const trace = emptyTrace();
  const podsPerJob = new Map<string, Set<string>>();
  const stamp = (m: Milestone, uuid: string | undefined, now: number): void => {
    const times = trace.get(m);
    if (uuid !== undefined && times && !times.has(uuid)) times.set(uuid, now);
  };
  const byName = (m: Milestone) => (o: KubernetesObject, now: number) => {
    stamp(m, uuidOfName(o.metadata?.name), now);
  };
  const pods: Watched<V1Pod> = {
    path: `/api/v1/namespaces/${namespace}/pods`,
    list: lists.pods,
    seen: (pod, now) => {
      const uuid = jobUuidOf(pod);
      if (!uuid) return;
      stamp("pod created", uuid, now);
      const set = podsPerJob.get(uuid) ?? new Set<string>();
      set.add(pod.metadata?.uid ?? "");
      podsPerJob.set(uuid, set);
      if (pod.spec?.nodeName) stamp("scheduled", uuid, now);
      if (pod.status?.phase === "Running") stamp("Running", uuid, now);
    },
    gone: (pod, now) => {
      stamp("pod deleted", jobUuidOf(pod), now);
    },
  };
  const watched: Watched<KubernetesObject>[] = [
    pods,
    {
      path: `/apis/buildkite.com/v1alpha1/namespaces/${namespace}/buildkitejobs`,
      list: lists.records,
      seen: byName("record created"),
    },
    { path: `/apis/batch/v1/namespaces/${namespace}/jobs`, list: lists.jobs, seen: byName("record created") },
    {
      path: `/api/v1/namespaces/${namespace}/secrets`,
      list: lists.secrets,
      seen: (o, now) => {
        if (o.metadata?.name?.endsWith("-token") === true) byName("token Secret")(o, now);
      },
    },
  ];
  const state = { stopped: false };
  const informers = watched.map((w) => {
    const informer = makeInformer<KubernetesObject>(kc, w.path, w.list);
    const seen = (o: KubernetesObject): void => {
      w.seen(o, Date.now());
    };
    informer.on("add", seen);
    informer.on("update", seen);
    informer.on("delete", (o) => {
      (w.gone ?? w.seen)(o, Date.now());
    });
    informer.on("error", () => {
      setTimeout(() => {
        if (!state.stopped) void informer.start();
      }, 500);
    });
    return informer;
  });
  // A CRD installed a moment ago answers 429 "storage is (re)initializing" for a while: the first list is retried.
  await Promise.all(
    informers.map(async (i) => {
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
  const kinds = ["pods", "records", "jobs", "secrets"] as const;
  return {
    trace,
    podsPerJob,
    current: (kind) => informers[kinds.indexOf(kind)]?.list() ?? [],
    stop: async () => {
      state.stopped = true;
      await Promise.all(informers.map((i) => i.stop()));
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
