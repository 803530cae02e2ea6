import { PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobResourceName, jobTokenSecretName } from "../../operator/src/api/names.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { testCluster } from "../support/global-cluster.js";
import { OperatorProcess } from "../support/operator-process.js";
import { RUNNER_ANNOTATION } from "../support/pod-runner.js";

const FAST = [
  "--poll-interval-ms=250",
  "--state-check-interval-ms=500",
  "--reservation-expiry-seconds=3",
  "--lease-duration-seconds=3",
];
const TERMINAL = ["Succeeded", "Failed", "Canceled", "TimedOut"];

describe("Reservations and restarts: the operator process killed mid-run loses no job and runs none twice", function () {
  this.timeout(180_000);
  let s: BuildkiteScenario;
  let operator: OperatorProcess | undefined;

  let FLAGS: string[];
  before(async () => {
    s = await BuildkiteScenario.start(testCluster().kubeConfig(), "bk-restart");
    // A replacement operator waits for the killed one's lease to lapse, as a new pod of the Deployment would.
    FLAGS = [...FAST, `--lease-namespace=${s.t.namespace}`, `--allowed-endpoints=${s.fake.agentEndpoint}`];
  });
  after(async () => {
    await operator?.stop();
    await s.stop();
  });

  it("extends the reservation of a job whose pod has not started; after a kill it lapses, and the restarted operator takes the same job back", async () => {
    operator = OperatorProcess.start("restart-a", FLAGS);
    await s.queue("held", "hold");
    const uuid = s.fake.seedJob({ queue_key: "held", command: "echo once" });
    await s.jobPhase(uuid, "Starting");
    const reserves = (): number =>
      s.fake
        .requests()
        .filter(
          (r) =>
            r.route === "stacks.batch-reserve" && ((r.body as { job_uuids?: string[] }).job_uuids ?? []).includes(uuid),
        ).length;
    await eventually(
      () => {
        expect(reserves(), "reservations of the job").to.be.at.least(4);
        return Promise.resolve();
      },
      { what: "the reservation to be extended several times", timeoutMs: 20_000 },
    );
    // Well past the 3 s expiry, the job is still ours.
    expect(s.fake.job(uuid).state).to.equal("reserved");

    await operator.kill();
    await eventually(
      () => {
        s.fake.sweep();
        expect(s.fake.job(uuid).state).to.equal("scheduled");
        return Promise.resolve();
      },
      { what: "the reservation to lapse once nobody extends it", timeoutMs: 20_000 },
    );

    const tokenOf = async (): Promise<string | undefined> =>
      (await s.t.core.readNamespacedSecret({ name: jobTokenSecretName(uuid), namespace: s.t.namespace })).data?.token;
    const lapsedToken = await tokenOf();
    operator = OperatorProcess.start("restart-b", FLAGS);
    await s.buildkiteState(uuid, "reserved", 30_000);
    // The job token died with the lapsed reservation; the pod may start once the new one is in its Secret (a kubelet
    // reads the Secret when the container starts).
    await eventually(
      async () => {
        expect(await tokenOf(), "the job's token Secret").to.not.equal(lapsedToken);
      },
      { what: "a fresh job token" },
    );
    // Now let the held pod run.
    await s.t.core.patchNamespacedPod(
      {
        name: jobResourceName(uuid),
        namespace: s.t.namespace,
        body: { metadata: { annotations: { [RUNNER_ANNOTATION]: "real" } } },
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    const done = await s.buildkiteState(uuid, "finished");
    expect(done.exit_status).to.equal(0);
    expect(s.acquisitions().get(uuid)).to.equal(1);
    expect(await s.jobsOf("held")).to.have.length(1);
    await s.jobPhase(uuid, "Succeeded");
  });

  it("kills the operator with SIGKILL in the middle of 12 jobs on 4 slots: all finish, each exactly once, and the slots come back", async () => {
    await operator?.stop();
    operator = OperatorProcess.start("restart-c", FLAGS);
    await s.queue("busy", "real", { instanceShape: "LINUX_AMD64_4X16", maxVCPU: 16 });
    const uuids = Array.from({ length: 12 }, (_, i) =>
      s.fake.seedJob({ queue_key: "busy", command: "sleep 1", priority: i % 3 }),
    );
    await eventually(
      () => {
        expect(uuids.filter((u) => s.fake.job(u).state === "finished").length).to.be.at.least(3);
        return Promise.resolve();
      },
      { what: "a few jobs finished", timeoutMs: 60_000 },
    );
    await operator.kill();
    operator = OperatorProcess.start("restart-d", FLAGS);
    for (const uuid of uuids) await s.buildkiteState(uuid, "finished", 120_000);
    for (const uuid of uuids) {
      expect(s.acquisitions().get(uuid), `acquisitions of ${uuid}`).to.equal(1);
      expect(s.fake.job(uuid).exit_status, uuid).to.equal(0);
    }
    const runs = s.runner.runs().filter((r) => r.uuid !== undefined && uuids.includes(r.uuid));
    expect(runs).to.have.length(12);
    const jobs = await s.jobsOf("busy");
    expect(jobs).to.have.length(12);
    await eventually(
      async () => {
        const all = await s.jobsOf("busy");
        expect(
          all.every((j) => TERMINAL.includes(j.status?.phase ?? "")),
          "every job terminal",
        ).to.equal(true);
        const q = await s.t.queue("busy");
        expect(q?.status).to.include({ active: 0, concurrency: 4 });
      },
      { what: "every job ended and the queue's slots free" },
    );
  });
});
