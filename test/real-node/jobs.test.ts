import { expect } from "chai";
import { jobResourceName } from "../../operator/src/api/names.js";
import { eventually } from "../support/eventually.js";
import { RealNodeScenario } from "./scenario.js";
import { startWorld, stopWorld, type World } from "./world.js";

/** What the isolation job reports about itself; written so that no expected value appears in the command's text. */
const SELF_REPORT = `
echo "report uid=$(id -u) gid=$(id -g)"
echo "report caps=$(awk '/^CapEff/ {print $2}' /proc/self/status) nnp=$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status) seccomp=$(awk '/^Seccomp:/ {print $2}' /proc/self/status)"
for p in /var/run/secrets/kubernetes.io/serviceaccount /run/secrets/kubernetes.io/serviceaccount /var/run/docker.sock /run/docker.sock /var/lib/kubelet /var/lib/containerd; do
  echo "report path $p $(test -e $p && echo y || echo n)"
done
if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
  echo "report cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)/$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us) memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
else
  echo "report cpu=$(cut -d' ' -f1 /sys/fs/cgroup/cpu.max)/$(cut -d' ' -f2 /sys/fs/cgroup/cpu.max) memory=$(cat /sys/fs/cgroup/memory.max)"
fi
awk '$3 !~ /^(proc|sysfs|tmpfs|devpts|mqueue|cgroup|cgroup2|overlay)$/ {print "report mount " $2}' /proc/self/mounts
`;

describe("Buildkite jobs in real containers on a real node", function () {
  this.timeout(300_000);
  let world: World | undefined;
  let s: RealNodeScenario;

  before(async () => {
    world = await startWorld();
    s = await RealNodeScenario.start(world, "real-jobs");
  });
  after(async () => {
    try {
      await s.stop();
    } finally {
      await stopWorld(world);
    }
  });

  it("runs a job in a pod on the real node: the agent acquires it, exit 3 and the log reach Buildkite, the job is Failed with exit 3, the pod is deleted", async () => {
    await s.queue("exit-three");
    const uuid = s.fake.seedJob({ queue_key: "exit-three", command: "echo marker-$((7000 + 327)); exit 3" });
    const done = await s.buildkiteState(uuid, "finished");
    expect(done.exit_status).to.equal(3);
    expect(done.log).to.include("marker-7327");
    const job = await s.jobPhase(uuid, "Failed");
    expect(job.status).to.include({
      exitCode: 3,
      reason: "NonZeroExit",
      shape: "LINUX_AMD64_2X4",
      nodeName: s.world.node.name,
    });
    await s.podGone(uuid);
    const acquired = s.fake
      .requests()
      .filter((r) => r.route === "agent.acquire" && r.status < 300 && r.path.includes(uuid));
    expect(acquired, "acquisitions of the job").to.have.length(1);
    const timeline = done.notifications.map((n) => n.detail);
    expect(
      timeline.some((d) => d.startsWith(`Pod placed on node ${s.world.node.name}`)),
      timeline.join(" | "),
    ).to.equal(true);
  });

  it("runs the job as non-root, with no capabilities, no API token, no docker socket or host paths, inside the shape's CPU and memory limits", async () => {
    await s.queue("isolated");
    const uuid = s.fake.seedJob({ queue_key: "isolated", command: SELF_REPORT });
    const done = await s.buildkiteState(uuid, "finished");
    expect(done.exit_status, done.log).to.equal(0);
    // the agent runs the command in a pseudo-terminal: lines end with \r\n
    const report = done.log
      .split("\n")
      .map((l) => /report ([^\r]*)/.exec(l)?.[1] ?? "")
      .filter((l) => l !== "" && !l.includes("$"));
    expect(report, done.log).to.include.members([
      "uid=1000 gid=1000",
      // RuntimeDefault seccomp (mode 2), no_new_privs, every capability dropped
      "caps=0000000000000000 nnp=1 seccomp=2",
      "path /var/run/secrets/kubernetes.io/serviceaccount n",
      "path /run/secrets/kubernetes.io/serviceaccount n",
      "path /var/run/docker.sock n",
      "path /run/docker.sock n",
      "path /var/lib/kubelet n",
      "path /var/lib/containerd n",
      // LINUX_AMD64_2X4: 2 CPUs (a CFS quota of two periods) and 4 GiB
      "cpu=200000/100000 memory=4294967296",
    ]);
    // Only the emptyDir workspace, the agent binary's emptyDir and the files kubelet always provides come from the
    // node's disk.
    const mounts = report.filter((l) => l.startsWith("mount ")).map((l) => l.slice("mount ".length));
    expect(mounts).to.have.members([
      "/workspace",
      "/buildkite/bin",
      "/etc/hosts",
      "/dev/termination-log",
      "/etc/hostname",
      "/etc/resolv.conf",
    ]);
    await s.jobPhase(uuid, "Succeeded");
    await s.podGone(uuid);
  });

  it("cancels a running job: the agent stops the command, Buildkite and the BuildkiteJob say Canceled, the pod is deleted", async () => {
    await s.queue("cancel");
    const uuid = s.fake.seedJob({ queue_key: "cancel", command: "echo started-$((40 + 2)); sleep 600" });
    await s.buildkiteState(uuid, "running");
    await eventually(
      () => {
        expect(s.fake.job(uuid).log).to.include("started-42");
        return Promise.resolve();
      },
      { timeoutMs: 60_000, what: "the command to start" },
    );
    const canceledAt = Date.now();
    s.fake.cancel(uuid);
    await s.buildkiteState(uuid, "canceled");
    const job = await s.jobPhase(uuid, "Canceled");
    expect(job.status?.reason).to.equal("CanceledInBuildkite");
    await s.podGone(uuid);
    process.stderr.write(`      (cancel → pod deleted in ${((Date.now() - canceledAt) / 1000).toFixed(1)} s)\n`);
    await eventually(
      async () => {
        expect(
          (await s.world.node.sandboxes()).get(`${s.t.namespace}/${jobResourceName(uuid)}`) ?? "removed",
        ).to.be.oneOf(["SANDBOX_NOTREADY", "removed"]);
      },
      { timeoutMs: 60_000, what: "kubelet to stop the pod's sandbox" },
    );
  });

  // What a real kubelet does at activeDeadlineSeconds: SIGTERM to the agent, which takes it as a graceful stop and
  // waits for the job; SIGKILL after terminationGracePeriodSeconds (60); only then is the pod Failed/DeadlineExceeded.
  // Nobody tells Buildkite: the fake finishes the job when the agent has been silent for 30 s (exit -1).
  it("stops a job that runs past maxJobDurationSeconds: the BuildkiteJob is TimedOut and the pod is deleted", async () => {
    await s.queue("deadline", { maxJobDurationSeconds: 20 });
    const uuid = s.fake.seedJob({ queue_key: "deadline", command: "echo started-$((40 + 3)); sleep 600" });
    await s.buildkiteState(uuid, "running");
    const running = Date.now();
    const job = await s.jobPhase(uuid, "TimedOut", 180_000);
    const timedOut = Date.now();
    expect(job.status).to.include({ reason: "DeadlineExceeded", nodeName: s.world.node.name });
    await s.podGone(uuid);
    // The preStop SIGQUIT makes the agent cancel the job and report it at once, instead of Buildkite waiting for a
    // lost agent: the job has ended there by the time the pod is gone.
    const record = await eventually(
      () => {
        const r = s.fake.job(uuid);
        expect(r.state).to.be.oneOf(["finished", "canceled", "timed_out"]);
        return Promise.resolve(r);
      },
      { timeoutMs: 15_000, what: "Buildkite to hear how the job ended" },
    );
    expect(record.signal_reason, "how the agent ended the job").to.equal("agent_stop");
    expect(timedOut - running, "TimedOut soon after the 20 s deadline, not after the 60 s grace period").to.be.below(
      45_000,
    );
    const t = (at: number): string => `${((at - running) / 1000).toFixed(1)} s`;
    process.stderr.write(
      `      (deadline 20 s: TimedOut ${t(timedOut)} after the job started; Buildkite ${record.state}, exit ${String(record.exit_status)}, after ${t(Date.now())})\n`,
    );
  });
});
