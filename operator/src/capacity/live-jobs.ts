import type { V1Pod } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import { isTerminal } from "../job/phase.js";
import type { LiveJobsView, ReadCache } from "../kube/controller.js";

/**
 * Whether a job counts for its queue's capacity: it is not terminal (it holds or waits for a slot), or it is and its
 * pod is still there (a terminal job keeps its slot until its pod is gone).
 */
export const isLive = (job: BuildkiteJob, hasPod: boolean): boolean => !isTerminal(job.status?.phase) || hasPod;

/** Whether a job waits for its pod: not terminal, and no pod recorded yet. */
export const awaitsPod = (job: BuildkiteJob): boolean =>
  !isTerminal(job.status?.phase) && job.status?.podUID === undefined;

/**
 * The jobs of each queue that count for its capacity, and those waiting for their pod, kept up to date from the job
 * and pod informers' changes. Reading a queue's capacity by scanning every BuildkiteJob of the namespace cost each
 * reconcile as much as the jobs kept (finished ones stay for their TTL): at thousands of jobs, most of the operator's
 * CPU. Only names are indexed; objects are read from the caches, so the index never serves a stale copy.
 */
export class LiveJobs implements LiveJobsView {
  /** `namespace/queue` → names of its live jobs. */
  private readonly live = new Map<string, Set<string>>();
  /** `namespace/queue` → names of its jobs waiting for a pod. */
  private readonly awaiting = new Map<string, Set<string>>();
  /** `namespace/job` → the `namespace/queue` it is indexed under. */
  private readonly queueOf = new Map<string, string>();

  constructor(
    private readonly jobs: ReadCache<BuildkiteJob>,
    private readonly pods: ReadCache<V1Pod>,
  ) {}

  /** The job `name` or its pod (named after it) changed, appeared or went: indexes it as the caches show it now. */
  changed(namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const job = this.jobs.get(name, namespace);
    const queue = job ? `${namespace}/${job.spec.queueRef.name}` : undefined;
    const before = this.queueOf.get(key);
    if (before !== undefined && before !== queue) {
      this.live.get(before)?.delete(name);
      this.awaiting.get(before)?.delete(name);
      this.queueOf.delete(key);
    }
    if (!job || queue === undefined) return;
    setMember(this.live, queue, name, isLive(job, this.pods.get(name, namespace) !== undefined));
    setMember(this.awaiting, queue, name, awaitsPod(job));
    if (this.live.get(queue)?.has(name) === true || this.awaiting.get(queue)?.has(name) === true)
      this.queueOf.set(key, queue);
    else this.queueOf.delete(key);
  }

  of(namespace: string, queue: string): BuildkiteJob[] {
    return this.read(this.live, namespace, queue);
  }

  waiting(namespace: string, queue: string): BuildkiteJob[] {
    return this.read(this.awaiting, namespace, queue);
  }

  private read(index: Map<string, Set<string>>, namespace: string, queue: string): BuildkiteJob[] {
    const jobs: BuildkiteJob[] = [];
    for (const name of index.get(`${namespace}/${queue}`) ?? []) {
      const job = this.jobs.get(name, namespace);
      if (job) jobs.push(job);
    }
    return jobs;
  }
}

function setMember(index: Map<string, Set<string>>, queue: string, name: string, member: boolean): void {
  let names = index.get(queue);
  if (member) {
    if (!names) index.set(queue, (names = new Set()));
    names.add(name);
  } else if (names?.delete(name) === true && names.size === 0) {
    index.delete(queue);
  }
}
