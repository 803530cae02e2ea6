import { expect } from "chai";
import { LABELS } from "../../operator/src/api/keys.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { FastRunner } from "../support/fast-runner.js";
import { testCluster } from "../support/global-cluster.js";
import { OperatorProcess } from "../support/operator-process.js";

/**
 * Reservations are 900 s here, as in production: a job reserved and then forgotten by a crash would hide from every
 * stack for 15 minutes, far beyond these tests' time limit, so finishing at all proves nothing was hidden.
 */
const FLAGS = [
  "--poll-interval-ms=250",
  "--state-check-interval-ms=500",
  "--reservation-expiry-seconds=900",
  "--lease-duration-seconds=3",
];
/** The queue's slots: 16 vCPU of 4-vCPU jobs. */
const SLOTS = 4;

describe("Crash safety of dispatch: an operator killed between recording, reserving and issuing tokens hides no job and runs none twice", function () {
  this.timeout(180_000);
  let s: BuildkiteScenario;
  let flags: string[];
  const operators: OperatorProcess[] = [];
  let runner: FastRunner;

  before(async () => {
    s = await BuildkiteScenario.start(testCluster().kubeConfig(), "bk-crash");
    runner = await FastRunner.start({
      kubeConfig: s.kc,
      namespaces: [s.t.namespace],
      fakeEndpoint: s.fake.agentEndpoint,
      durationMs: 200,
    });
    flags = [...FLAGS, `--lease-namespace=${s.t.namespace}`, `--allowed-endpoints=${s.fake.agentEndpoint}`];
  });
  after(async () => {
    for (const o of operators) await o.stop();
    await runner.stop();
    await s.stop();
  });

  /** Runs 8 jobs on 4 slots with the operator dying at `fault`, then a fresh one; samples the slots throughout. */
  async function survive(queue: string, fault: string, whileDown: (uuids: string[]) => Promise<void>): Promise<void> {
    await s.queue(queue, "fast", { instanceShape: "LINUX_AMD64_4X16", maxVCPU: 16 });
    const uuids = Array.from({ length: 8 }, (_, i) =>
      s.fake.seedJob({ queue_key: queue, command: "true", priority: i % 2 }),
    );
    let most = 0;
    const sampling = { on: true };
    const sampler = (async () => {
      while (sampling.on) {
        const pods = await s.t.core.listNamespacedPod({
          namespace: s.t.namespace,
          labelSelector: `${LABELS.queue}=${queue}`,
        });
        const live = pods.items.filter(
          (p) =>
            p.status?.phase !== "Succeeded" &&
            p.status?.phase !== "Failed" &&
            p.metadata?.deletionTimestamp === undefined,
        );
        most = Math.max(most, live.length);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const dying = OperatorProcess.start(`crash-${queue}-a`, flags, { BK_OPERATOR_FAULTS: fault });
    operators.push(dying);
    await dying.exit;
    await whileDown(uuids);
    operators.push(OperatorProcess.start(`crash-${queue}-b`, flags));
    try {
      for (const uuid of uuids) await s.buildkiteState(uuid, "finished", 60_000);
    } finally {
      sampling.on = false;
      await sampler;
    }
    for (const uuid of uuids) {
      expect(s.acquisitions().get(uuid), `acquisitions of ${uuid}`).to.equal(1);
      expect(s.fake.job(uuid).exit_status, uuid).to.equal(0);
    }
    expect(most, "job pods of the queue alive at once").to.be.within(1, SLOTS);
    await eventually(
      async () => {
        expect(await s.jobsOf(queue)).to.have.length(uuids.length);
      },
      { what: "one BuildkiteJob per job" },
    );
  }

  it("killed after recording jobs and before reserving them: they stay scheduled in Buildkite, and the next operator runs each once", async () => {
    await survive("recorded", "after-create-jobs", async (uuids) => {
      // Nothing hides a job from other stacks: it was recorded here, never reserved.
      expect(uuids.map((u) => s.fake.job(u).state)).to.not.include("reserved");
      expect(await s.jobsOf("recorded"), "BuildkiteJobs recorded before the crash").to.not.be.empty;
    });
    await operators.at(-1)?.stop();
  });

  it("killed after reserving jobs and before their job tokens: the next operator finds them by their records, and runs each once", async () => {
    await survive("reserved", "after-reserve", async (uuids) => {
      // Each job reserved at the crash is recorded as a BuildkiteJob, so the next operator knows it holds it.
      const reserved = uuids.filter((u) => s.fake.job(u).state === "reserved");
      expect(reserved).to.not.be.empty;
      const recorded = new Set((await s.jobsOf("reserved")).map((j) => j.spec.uuid));
      expect(
        reserved.filter((u) => !recorded.has(u)),
        "reserved without a record",
      ).to.deep.equal([]);
    });
    await operators.at(-1)?.stop();
  });
});
