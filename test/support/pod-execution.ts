import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { locate, type Launch } from "./container-launch.js";
import { ContainerProcess } from "./container-process.js";
import { acquiredJob, agentContainer, isSidecar } from "./kubelet-env.js";
import type { ContainerFacts, PodFacts } from "./kubelet-status.js";

/** How a container takes part in its pod: an init container, a native sidecar, or a regular container. */
export type ContainerKind = "init" | "sidecar" | "container";

/** What the runner did with one container of a pod. */
export interface ContainerRun {
  readonly name: string;
  readonly kind: ContainerKind;
  readonly startedAt: Date | undefined;
  readonly finishedAt: Date | undefined;
  readonly exitCode: number | undefined;
  /** The termination reason (Completed, Error, StartError). */
  readonly reason: string | undefined;
  /** The container's last output lines. */
  readonly output: string;
  /** Set for a sidecar that was reported as running but not run: its command is not on this machine. */
  readonly note?: string;
}

/** What the runner did with one pod. */
export interface PodRun {
  readonly name: string;
  readonly uid: string;
  /** The Buildkite job the agent container was told to acquire (`--acquire-job` or `BUILDKITE_AGENT_ACQUIRE_JOB`). */
  readonly uuid: string | undefined;
  readonly startedAt: Date;
  /** When the agent container exited. */
  readonly finishedAt: Date | undefined;
  /** The agent container's exit code (the operator reads its terminated state). */
  readonly exitCode: number | undefined;
  /** The agent container's termination reason (Completed, Error, StartError), or the pod's DeadlineExceeded. */
  readonly reason: string | undefined;
  /** The agent container's last output lines. */
  readonly output: string;
  /** The pod's terminal phase once every container has stopped. */
  readonly phase: "Succeeded" | "Failed" | undefined;
  /** Every container, init containers first, in the spec's order. */
  readonly containers: readonly ContainerRun[];
}

interface Slot {
  readonly spec: V1Container;
  readonly kind: ContainerKind;
  readonly process: ContainerProcess;
  launch?: Launch;
  note?: string;
  waiting?: { reason: string; message: string };
}

/**
 * One pod on the node, as the kubelet runs it with restartPolicy Never: the init containers in order (each must exit
 * 0 before the next starts; a native sidecar is started and left running), then every regular container at once;
 * once they have all exited, the sidecars are stopped in reverse order. Deletion or the deadline stops the regular
 * and init containers (SIGTERM, SIGKILL after the grace period) and starts nothing more. preStop hooks are not run.
 */
export class PodExecution {
  readonly name: string;
  readonly uid: string;
  readonly uuid: string | undefined;
  readonly #slots: Slot[];
  readonly #agent: Slot | undefined;
  startedAt = new Date();
  deadlineExceeded = false;
  /** Every container has stopped for good. */
  ended = false;
  /** Set once the final status is written (or cannot be: the pod is gone, the runner stopped). */
  settled = false;
  /** Resolves when {@link run} returns. */
  done: Promise<void> = Promise.resolve();
  /** The pod's status writes, one after another. */
  writes: Promise<void> = Promise.resolve();
  #stopGraceMs: number | undefined;

  constructor(pod: V1Pod, isolated: boolean) {
    this.name = pod.metadata?.name ?? "";
    this.uid = pod.metadata?.uid ?? "";
    const slot = (spec: V1Container, kind: ContainerKind): Slot => ({
      spec,
      kind,
      process: new ContainerProcess(spec.name, isolated),
    });
    this.#slots = [
      ...(pod.spec?.initContainers ?? []).map((c) => slot(c, isSidecar(c) ? "sidecar" : "init")),
      ...(pod.spec?.containers ?? []).map((c) => slot(c, "container")),
    ];
    const agent = agentContainer(pod);
    this.#agent = this.#slots.find((s) => s.kind === "container" && s.spec === agent);
    this.uuid = agent && acquiredJob(agent);
  }

  /** The containers in the order they are started, each with its launch. */
  containers(): readonly V1Container[] {
    return this.#slots.map((s) => s.spec);
  }

  setLaunch(launch: Launch): void {
    const slot = this.#slots.find((s) => s.spec.name === launch.container);
    if (slot) slot.launch = launch;
  }

  /** Records why containers could not be created; `container` undefined: all of them (a volume failed). */
  setWaiting(reason: string, message: string, container?: string): void {
    for (const slot of this.#slots)
      if (container === undefined || slot.spec.name === container) slot.waiting = { reason, message };
  }

  get running(): boolean {
    return this.#slots.some((s) => s.process.running);
  }

  /** Runs the pod's containers to the end; `onChange` is called whenever one starts or stops. */
  async run(onChange: () => void, sidecarGraceMs: number): Promise<void> {
    this.startedAt = new Date();
    let failed = false;
    for (const slot of this.#slots.filter((s) => s.kind !== "container")) {
      if (this.#stopGraceMs !== undefined) break;
      this.#start(slot);
      onChange();
      if (slot.kind === "sidecar") continue;
      await slot.process.closed;
      onChange();
      failed = slot.process.exitCode !== 0;
      if (failed) break;
    }
    const regular = this.#slots.filter((s) => s.kind === "container");
    if (!failed && this.#stopGraceMs === undefined) {
      for (const slot of regular) this.#start(slot);
      onChange();
      await Promise.all(regular.map((s) => s.process.closed.then(onChange)));
    }
    // Sidecars stop once the regular containers have, last started first (KEP-753).
    for (const slot of this.#slots.filter((s) => s.kind === "sidecar").reverse()) {
      slot.process.terminate(Math.min(sidecarGraceMs, this.#stopGraceMs ?? sidecarGraceMs));
      await slot.process.closed;
    }
    this.ended = true;
  }

  /** As the kubelet stops a pod (deleted, or past its deadline): starts nothing more, stops what runs. */
  terminate(graceMs: number): void {
    this.#stopGraceMs = Math.min(graceMs, this.#stopGraceMs ?? graceMs);
    for (const slot of this.#slots) if (slot.kind !== "sidecar") slot.process.terminate(this.#stopGraceMs);
  }

  /** SIGKILL to every container's processes (the test run is ending). */
  kill(): void {
    for (const slot of this.#slots) slot.process.kill();
  }

  #start(slot: Slot): void {
    const { launch, process } = slot;
    if (!launch) throw new Error(`pod ${this.name}: container ${slot.spec.name} was started unprepared`);
    const binary = launch.unknownEntrypoint === true ? undefined : locate(launch.binary, launch.env.PATH ?? "");
    if (binary === undefined && slot.kind === "sidecar") {
      // The sidecar's image binary is not on this machine: reported running, so the pod goes on as it would.
      const what =
        launch.unknownEntrypoint === true ? "its image's entrypoint is unknown" : `${launch.binary} is not here`;
      slot.note = `sidecar ${slot.spec.name} (${slot.spec.image ?? "no image"}) was not run: ${what}; reported as running`;
      process.standIn();
      return;
    }
    process.start(launch, binary);
  }

  /** What is known now, for the pod's status. */
  facts(): PodFacts {
    const containers = new Map<string, ContainerFacts>();
    for (const { spec, process, waiting } of this.#slots)
      containers.set(spec.name, {
        name: spec.name,
        startedAt: process.startedAt,
        finishedAt: process.finishedAt,
        exitCode: process.exitCode,
        reason: process.reason,
        waiting,
      });
    const notes = this.#slots.flatMap((s) => (s.note === undefined ? [] : [s.note]));
    return {
      startedAt: this.#slots.some((s) => s.process.startedAt) ? this.startedAt : undefined,
      containers,
      ended: this.ended,
      deadlineExceeded: this.deadlineExceeded,
      message: notes.length > 0 ? `pod runner: ${notes.join("; ")}` : undefined,
    };
  }

  view(): PodRun {
    const agent = this.#agent?.process;
    const regular = this.#slots.filter((s) => s.kind === "container");
    const succeeded = !this.deadlineExceeded && regular.every((s) => s.process.exitCode === 0);
    return {
      name: this.name,
      uid: this.uid,
      uuid: this.uuid,
      startedAt: this.startedAt,
      finishedAt: agent?.finishedAt,
      exitCode: agent?.exitCode,
      reason: this.deadlineExceeded ? "DeadlineExceeded" : agent?.reason,
      output: agent?.tail.join("\n") ?? "",
      phase: this.ended ? (succeeded ? "Succeeded" : "Failed") : undefined,
      containers: this.#slots.map(({ spec, kind, process, note }) => ({
        name: spec.name,
        kind,
        startedAt: process.startedAt,
        finishedAt: process.finishedAt,
        exitCode: process.exitCode,
        reason: process.reason,
        output: process.tail.join("\n"),
        ...(note === undefined ? {} : { note }),
      })),
    };
  }
}
