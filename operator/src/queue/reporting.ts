import { BUILDKITE_JOB, type BuildkiteJob } from "../api/generated/buildkite-job.js";
import { ANNOTATIONS } from "../api/keys.js";
import { jobResourceName } from "../api/names.js";
import { BuildkiteApiError } from "../buildkite/errors.js";
import { isTerminal } from "../job/phase.js";
import { reportAnnotation } from "../job/plan.js";
import { annotate } from "../kube/resources.js";
import { NotLeaderError } from "../kube/write-guard.js";
import { finishDetail, reportsDue, timelineNotes } from "./dispatch.js";
import { ignoreNotFound, queueKeyOf, type Scope } from "./source-duties.js";
import { dispatchError } from "./source-support.js";

/**
 * Tells Buildkite (`finish`, exit -1, with the reason) about each job that could not run, so it does not sit reserved
 * until it lapses and runs nowhere, and records the answer on the job. A retried `finish` whose first attempt went
 * through comes back "already finished": Buildkite showing the job finished counts as reported.
 */
export async function report(s: Scope): Promise<void> {
  const { ctx, conn } = s;
  for (const job of reportsDue(s.jobs, conn.key)) {
    if (ctx.mayAct?.() === false)
      throw new NotLeaderError(
        "This replica may not act (it is not the leader, or its lease may have lapsed): no job is finished in Buildkite.",
      );
    let outcome: string;
    try {
      await conn.client.finish(conn.key, job.spec.uuid, finishDetail(job));
      outcome = reportAnnotation("Finished", "Buildkite was told the job could not run, with the reason above.");
      ctx.logger.info("Told Buildkite a job could not run", {
        namespace: job.metadata.namespace,
        job: job.metadata.name,
        reason: job.status?.reason,
      });
    } catch (err) {
      if (!(err instanceof BuildkiteApiError) || err.retryable || err.status === 404 || err.status === 401)
        throw dispatchError(err, "finish a job that could not run");
      const state = (await conn.client.getStates(conn.key, [job.spec.uuid])).get(job.spec.uuid);
      outcome =
        state === "finished"
          ? reportAnnotation("Finished", "Buildkite shows the job finished; it was not run here.")
          : reportAnnotation("FinishRefused", `Buildkite refused to finish the job: ${err.message}`);
    }
    await annotate(ctx.clients, BUILDKITE_JOB, job.metadata.namespace ?? "", job.metadata.name ?? "", {
      [ANNOTATIONS.reported]: outcome,
    }).catch(ignoreNotFound);
  }
}

/**
 * Sends each job's timeline notes once. A job this process did not create (it was running before a restart) starts
 * from the notes its state already calls for, so a restart repeats nothing on the timeline.
 */
export function notifyTimeline(s: Scope): void {
  const { conn, jobs, memory } = s;
  const live = new Set<string>();
  for (const job of jobs) {
    if (job.metadata.annotations?.[ANNOTATIONS.stack] !== conn.key || isTerminal(job.status?.phase)) continue;
    live.add(job.spec.uuid);
    noteJob(conn, memory, s.queue, job);
  }
  const namespace = s.queue.metadata.namespace ?? "";
  for (const uuid of memory.notified.keys()) {
    if (!live.has(uuid) && !s.ctx.expectations.has(queueKeyOf(s.queue), `${namespace}/${jobResourceName(uuid)}`))
      memory.notified.delete(uuid);
  }
}

/**
 * Sends the notes one job's state calls for and that were not sent yet. Called on every change of the job (so a
 * note goes out as soon as its status records the fact, even when the job ends before the next poll) and by the
 * per-poll sweep.
 */
export function noteJob(
  conn: Scope["conn"],
  memory: Scope["memory"],
  queue: Scope["queue"] | undefined,
  job: BuildkiteJob,
): void {
  if (job.metadata.annotations?.[ANNOTATIONS.stack] !== conn.key) return;
  const uuid = job.spec.uuid;
  const notes = timelineNotes(job, queue);
  const sent = memory.notified.get(uuid);
  if (sent === undefined) {
    memory.notified.set(uuid, new Set(notes.map((n) => n.fact)));
    return;
  }
  for (const note of notes) {
    if (sent.has(note.fact)) continue;
    sent.add(note.fact);
    conn.notifier.add(uuid, note.text);
  }
}
