import type { CoreV1Api, V1Pod } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../operator/src/api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../operator/src/api/generated/buildkite-queue.js";
import type { FakeBuildkite } from "../test/fake-buildkite/server.js";
import { LABELS } from "../operator/src/api/keys.js";
import { NAMESPACE, RELEASE_JOB, type DemoJob, type Role } from "./demo-story.js";

/** What the cluster holds at one look. */
export interface World {
  queues: BuildkiteQueue[];
  jobs: BuildkiteJob[];
  pods: V1Pod[];
}

export interface DirectorDeps {
  fake: FakeBuildkite;
  core: CoreV1Api;
  /** Prints a line that stays. */
  say: (line: string) => void;
  /** Schedules a job in Buildkite; returns its uuid. */
  seed: (job: DemoJob) => string;
  /** The uuids of the jobs with a role. */
  jobsWith: (role: Role) => { uuid: string; label: string }[];
}

/** How long the job of linux-xlarge waits for a node before it is canceled in Buildkite. */
const WAIT_BEFORE_CANCEL_MS = 3_000;

/** Each fact the demo must show before it ends. */
const FACTS = [
  "credentials linux-medium-arm",
  "credentials release-arm",
  "event release-arm",
  "timeline release-arm",
  "pod step-image",
  "waiting canceled",
  "canceled canceled",
  "timed-out deadline",
  "buildkite deadline",
] as const;
type Fact = (typeof FACTS)[number];

/**
 * Acts the demo's stories as the jobs move, and prints what a person should see of each as it happens: the queues'
 * AWS credentials (a role that works, one whose trust policy does not admit the queue, with its Event and the line
 * in the job's Buildkite timeline), the pod of a step with its own image and a service, a job canceled in Buildkite
 * while its pod waits for a node, and a job stopped at its queue's deadline.
 */
export class Director {
  private readonly shown = new Set<Fact>();
  private waitingSince: number | undefined;
  private credentialsMessage: string | undefined;

  constructor(private readonly deps: DirectorDeps) {}

  /** The facts not shown yet (the demo is done when none are left). */
  pending(): string[] {
    return FACTS.filter((f) => !this.shown.has(f));
  }

  async tick(world: World): Promise<void> {
    this.credentials(world.queues);
    await this.event();
    this.timeline();
    this.stepImage(world.pods);
    this.canceled(world.jobs);
    this.deadline(world.jobs);
  }

  private show(fact: Fact, line: string | undefined): void {
    if (line === undefined || this.shown.has(fact)) return;
    this.shown.add(fact);
    this.deps.say(`* ${line}`);
  }

  private credentials(queues: BuildkiteQueue[]): void {
    for (const q of queues) {
      const name = q.metadata.name ?? "";
      const c = q.status?.conditions?.find((x) => x.type === "CredentialsReady");
      if (c === undefined || c.status === "Unknown") continue;
      const fact = `credentials ${name}`;
      if (fact !== "credentials linux-medium-arm" && fact !== "credentials release-arm") continue;
      if (this.shown.has(fact)) continue;
      this.show(fact, `${name}: CredentialsReady=${c.status} ${c.reason}. ${c.message}`);
      if (fact === "credentials release-arm") this.credentialsMessage = c.message;
      // A person pushes a release now, on the queue whose role is broken.
      if (fact === "credentials release-arm") this.deps.seed(RELEASE_JOB);
    }
  }

  private async event(): Promise<void> {
    if (!this.shown.has("credentials release-arm") || this.shown.has("event release-arm")) return;
    const events = await this.deps.core.listNamespacedEvent({
      namespace: NAMESPACE,
      fieldSelector: "involvedObject.kind=BuildkiteQueue,involvedObject.name=release-arm",
    });
    const e = events.items.find((x) => x.reason === "AccessDenied");
    if (!e) return;
    const condition = this.credentialsMessage;
    const words = e.message === condition ? "in the same words" : `: ${e.message ?? ""}`;
    this.show(
      "event release-arm",
      `release-arm: an Event, ${e.type ?? ""} ${e.reason ?? ""}, says so ${words} (kubectl describe bkq release-arm)`,
    );
  }

  private timeline(): void {
    const [job] = this.deps.jobsWith("wrong-role");
    if (!job) return;
    const notes = this.deps.fake.job(job.uuid).notifications.map((n) => n.detail);
    const note = notes.find((d) => d.includes("AccessDenied") || d.includes("role"));
    if (note !== undefined) this.show("timeline release-arm", `"${job.label}": in its Buildkite timeline: ${note}`);
  }

  private stepImage(pods: V1Pod[]): void {
    const [job] = this.deps.jobsWith("step-image");
    const pod = pods.find((p) => p.metadata?.labels?.[LABELS.jobUuid] === job?.uuid.toLowerCase());
    if (!job || !pod?.spec) return;
    const command = pod.spec.containers.find((c) => c.name === "command");
    const services = (pod.spec.initContainers ?? [])
      .filter((c) => c.restartPolicy === "Always")
      .map((c) => `${c.name} (${c.image ?? ""})`);
    this.show(
      "pod step-image",
      `"${job.label}": pod ${pod.metadata?.name ?? ""} runs the step in ${command?.image ?? "?"} with the service ` +
        `${services.join(", ") || "(none)"} as a native sidecar (read from the pod spec: KWOK nodes run no containers)`,
    );
  }

  private canceled(jobs: BuildkiteJob[]): void {
    const [job] = this.deps.jobsWith("canceled");
    const bkj = jobs.find((j) => j.spec.uuid === job?.uuid);
    if (!job || !bkj) return;
    const status = bkj.status ?? {};
    if (!this.shown.has("waiting canceled") && status.podName !== undefined && status.nodeName === undefined) {
      this.waitingSince ??= Date.now();
      if (Date.now() - this.waitingSince < WAIT_BEFORE_CANCEL_MS) return;
      this.deps.fake.cancel(job.uuid);
      this.show(
        "waiting canceled",
        `"${job.label}": ${status.phase ?? ""} ${status.reason ?? ""}: ${status.message ?? ""} Canceled in Buildkite now.`,
      );
    }
    if (status.phase === "Canceled")
      this.show("canceled canceled", `"${job.label}": Canceled ${status.reason ?? ""}: ${status.message ?? ""}`);
  }

  private deadline(jobs: BuildkiteJob[]): void {
    const [job] = this.deps.jobsWith("deadline");
    const status = jobs.find((j) => j.spec.uuid === job?.uuid)?.status;
    if (!job) return;
    if (status?.phase === "TimedOut")
      this.show("timed-out deadline", `"${job.label}": TimedOut ${status.reason ?? ""}: ${status.message ?? ""}`);
    const record = this.deps.fake.job(job.uuid);
    if (this.shown.has("timed-out deadline") && record.state === "finished")
      this.show(
        "buildkite deadline",
        `"${job.label}": Buildkite shows it stopped by its agent (exit ${String(record.exit_status)}, signal ` +
          `${record.signal ?? "none"}, ${record.signal_reason ?? "no reason"})`,
      );
  }
}
